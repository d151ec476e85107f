package udp

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/testutil"
)

var (
	cidrA = netip.MustParsePrefix("10.244.1.0/24")
	cidrB = netip.MustParsePrefix("10.244.2.0/24")
)

type details struct {
	mu sync.Mutex
	m  map[string]string
}

func (d *details) Detail(k, v string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.m == nil {
		d.m = map[string]string{}
	}
	d.m[k] = v
}

func (d *details) get(k string) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.m[k]
}

// testNode is one node's udp backend over fakes.
type testNode struct {
	k       *FakeKernel
	table   *route.Table
	routes  *route.Fake
	guard   *encapguard.Fake
	metrics *Metrics
	status  *details
	b       backend.Backend
	local   backend.LocalNode
	cancel  context.CancelFunc
}

func newTestNode(t *testing.T, fn *FakeNet, name string, ip netip.Addr, cidr netip.Prefix) *testNode {
	t.Helper()
	n := &testNode{k: NewFakeKernel(fn, ip), guard: encapguard.NewFake(), metrics: NewMetrics(), status: &details{}}
	n.table, n.routes = route.NewFakeTable()
	f := Factory{Kernel: n.k, Routes: n.table, Guard: n.guard, Metrics: n.metrics, Status: n.status}
	b, err := f.New([]byte(`{"type":"udp"}`))
	if err != nil {
		t.Fatal(err)
	}
	n.b = b
	n.local = backend.LocalNode{Name: name, UnderlayIP: ip, UnderlayLink: "eth0", PodCIDR: cidr}
	life, cancel := context.WithCancel(context.Background())
	n.cancel = cancel
	pub, err := b.Start(life, n.local)
	if err != nil {
		t.Fatal(err)
	}
	if pub.MTU != 1500-28 {
		t.Fatalf("published MTU %d, want 1472 (underlay 1500 - 28)", pub.MTU)
	}
	t.Cleanup(func() {
		_ = b.Stop(context.Background(), false)
		cancel()
	})
	return n
}

func (n *testNode) apply(t *testing.T, peers ...backend.Peer) backend.ApplyResult {
	t.Helper()
	res, err := n.b.Apply(context.Background(), peers)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func bpeer(n *testNode, types ...string) backend.Peer {
	return backend.Peer{Name: n.local.Name, UnderlayIP: n.local.UnderlayIP, PodCIDRs: []netip.Prefix{n.local.PodCIDR}, Backends: types}
}

// TestBackendCarriesPodTraffic: two nodes' backends over a fake underlay:
// Start gives weft.udp the pod CIDR's network address; Apply routes the
// peer's pod CIDR into it (owner udp), admits the peer in the guard and
// the relay; a packet routed into node a's TUN comes out of node b's; a
// peer that does not decapsulate udp is left out.
func TestBackendCarriesPodTraffic(t *testing.T) {
	fn := NewFakeNet()
	na := newTestNode(t, fn, "a", nodeA, cidrA)
	nb := newTestNode(t, fn, "b", nodeB, cidrB)
	_, addrs, _ := na.k.State()
	if len(addrs) != 1 || addrs[0] != netip.MustParsePrefix("10.244.1.0/32") {
		t.Fatalf("weft.udp addresses %v, want [10.244.1.0/32]", addrs)
	}
	vxOnly := backend.Peer{Name: "c", UnderlayIP: a("192.168.77.13"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}, Backends: []string{"vxlan"}}
	if res := na.apply(t, bpeer(nb, "udp"), vxOnly, bpeer(na, "udp")); res.Peers != 1 || len(res.Problems) != 0 {
		t.Fatalf("apply: %+v", res)
	}
	nb.apply(t, bpeer(na, "udp"))
	rs := na.routes.Routes()
	if len(rs) != 1 || rs[0].Dst != cidrB || rs[0].Dev != DefaultDevice || rs[0].Gw.IsValid() {
		t.Fatalf("routes on a: %v, want only %s dev %s", rs, cidrB, DefaultDevice)
	}
	if o := na.table.Owners()[cidrB]; o != Type {
		t.Fatalf("owner of %s: %q", cidrB, o)
	}
	if !na.guard.Admits(Type, nodeB, a("10.244.2.7")) || na.guard.Admits(Type, nodeB, a("10.244.1.7")) ||
		na.guard.Admits(Type, a("192.168.77.13"), a("10.244.2.7")) {
		t.Fatal("guard does not admit exactly b's pods from b")
	}
	if !na.guard.AdmitsDst(Type, a("10.244.1.7")) || na.guard.AdmitsDst(Type, a("10.244.2.7")) || na.guard.AdmitsDst(Type, nodeB) {
		t.Fatal("guard admits inner destinations outside a's own pod CIDR")
	}
	// c does not announce udp yet, but may send it as soon as it sees a
	// announce it (before a sees c's announcement): admitted, for its own
	// pods only; a routes nothing to it.
	if !na.guard.Admits(Type, a("192.168.77.13"), a("10.244.3.1")) {
		t.Fatal("a known node not yet announcing udp is not admitted for its own pods")
	}
	if s, _ := na.guard.Spec(Type); s.Encap.Port != DefaultPort {
		t.Fatalf("guard port %d", s.Encap.Port)
	}
	na.k.Device().Inject(ip4("10.244.1.5", "10.244.2.7"))
	testutil.Eventually(t, "packet in b's TUN", func() bool { return len(nb.k.Device().Written()) == 1 })
	if d := na.status.get(DetailOffload); !strings.HasPrefix(d, "tun ") {
		t.Fatalf("readiness detail %q", d)
	}
}

// TestBackendRecoversFromRelayFailure: when the device goes (deleted under
// the relay), Run ends; the next Apply reports it, re-opens the device and
// the relay, and traffic flows again; a re-open that fails is an Apply
// error, and the Apply after that recovers. Counters keep growing.
func TestBackendRecoversFromRelayFailure(t *testing.T) {
	fn := NewFakeNet()
	na := newTestNode(t, fn, "a", nodeA, cidrA)
	nb := newTestNode(t, fn, "b", nodeB, cidrB)
	na.apply(t, bpeer(nb, "udp"))
	nb.apply(t, bpeer(na, "udp"))
	na.k.Device().Inject(ip4("10.244.1.5", "10.244.2.7"))
	testutil.Eventually(t, "first packet", func() bool { return len(nb.k.Device().Written()) == 1 })

	_ = nb.k.RemoveDevice(DefaultDevice) // deleted by hand: the relay's reads fail
	nb.k.FailOpens(errors.New("tun busy"))
	if _, err := nb.b.Apply(context.Background(), []backend.Peer{bpeer(na, "udp")}); err == nil || !strings.Contains(err.Error(), "tun busy") {
		t.Fatalf("apply with a failing re-open: %v", err)
	}
	nb.k.FailOpens(nil)
	res := nb.apply(t, bpeer(na, "udp"))
	if len(res.Problems) != 1 || !strings.Contains(res.Problems[0], "re-opened") {
		t.Fatalf("problems %q: the restart is not reported", res.Problems)
	}
	exists, addrs, opens := nb.k.State()
	if !exists || len(addrs) != 1 || opens != 2 {
		t.Fatalf("after recovery: exists %v addrs %v opens %d", exists, addrs, opens)
	}
	na.k.Device().Inject(ip4("10.244.1.5", "10.244.2.8"))
	testutil.Eventually(t, "packet after recovery", func() bool { return len(nb.k.Device().Written()) == 1 })
	if s := nb.metrics.Snapshot(); s.Rx.Packets != 2 {
		t.Fatalf("rx packets across the re-open: %d, want 2", s.Rx.Packets)
	}
	if res := nb.apply(t, bpeer(na, "udp")); len(res.Problems) != 0 || res.Changes != 0 {
		t.Fatalf("steady state apply: %+v", res)
	}
}

// TestBackendSwitchAndStop: udp takes a destination vxlan held by one
// replace; Stop without cleanup keeps device and routes; Stop with cleanup
// after vxlan took the route back releases only udp's, removes the device
// and the guard; Factory.Cleanup removes a leftover device.
func TestBackendSwitchAndStop(t *testing.T) {
	fn := NewFakeNet()
	na := newTestNode(t, fn, "a", nodeA, cidrA)
	ctx := context.Background()
	vx := []route.Route{{Dst: cidrB, Dev: "weft.vxlan", Gw: a("10.244.2.0"), OnLink: true}}
	if _, err := na.table.Apply(ctx, "vxlan", vx); err != nil {
		t.Fatal(err)
	}
	before := len(na.routes.Ops())
	na.apply(t, backend.Peer{Name: "b", UnderlayIP: nodeB, PodCIDRs: []netip.Prefix{cidrB}, Backends: []string{"vxlan", "udp"}})
	ops := na.routes.Ops()[before:]
	if len(ops) != 1 || ops[0].String() != "replace 10.244.2.0/24 vxlan->udp" {
		t.Fatalf("hand-over ops %v, want one replace vxlan->udp", ops)
	}
	if err := na.b.Stop(ctx, false); err != nil {
		t.Fatal(err)
	}
	if exists, _, _ := na.k.State(); !exists || len(na.routes.Routes()) != 1 {
		t.Fatal("Stop without cleanup removed the device or the route")
	}
	if _, err := na.table.Apply(ctx, "vxlan", vx); err != nil { // the switch back claims it again
		t.Fatal(err)
	}
	if err := na.b.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	rs := na.routes.Routes()
	if exists, _, _ := na.k.State(); exists || len(rs) != 1 || rs[0].Dev != "weft.vxlan" {
		t.Fatalf("after cleanup: device exists %v, routes %v (want vxlan's only)", exists, rs)
	}
	if _, ok := na.guard.Spec(Type); ok {
		t.Fatal("guard chains left after cleanup")
	}
	if na.status.get(DetailOffload) != "" {
		t.Fatal("readiness detail left after cleanup")
	}
	k := NewFakeKernel(fn, nodeB)
	if _, err := k.OpenDevice(DefaultDevice, 1472); err != nil {
		t.Fatal(err)
	}
	g := encapguard.NewFake()
	if _, err := g.Apply(ctx, guardSpec(Config{Port: DefaultPort}, netip.MustParsePrefix("10.244.1.0/24"), nil)); err != nil {
		t.Fatal(err)
	}
	if err := (Factory{Kernel: k, Guard: g}).Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec(Type); ok {
		t.Fatal("Factory.Cleanup left the guard")
	}
	if exists, _, _ := k.State(); exists {
		t.Fatal("Factory.Cleanup left weft.udp")
	}
}

// TestMetricsExported: the collector exports traffic, drops by reason,
// batch sizes and the offload mode.
func TestMetricsExported(t *testing.T) {
	fn := NewFakeNet()
	na := newTestNode(t, fn, "a", nodeA, cidrA)
	nb := newTestNode(t, fn, "b", nodeB, cidrB)
	na.apply(t, bpeer(nb, "udp"))
	nb.apply(t, bpeer(na, "udp"))
	for range 5 {
		na.k.Device().Inject(ip4("10.244.1.5", "10.244.2.7"))
	}
	fn.Deliver(netip.AddrPortFrom(nodeA, DefaultPort), netip.AddrPortFrom(nodeB, DefaultPort), ip4("10.244.9.5", "10.244.2.7"))
	testutil.Eventually(t, "traffic and a drop", func() bool {
		s := nb.metrics.Snapshot()
		return s.Rx.Packets == 5 && s.Drops["spoofed-source"] == 1
	})
	reg := prometheus.NewRegistry()
	reg.MustRegister(nb.metrics)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*dto.MetricFamily{}
	for _, mf := range mfs {
		got[mf.GetName()] = mf
	}
	val := func(name, label, value string) float64 {
		for _, m := range got[name].GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					if m.Histogram != nil {
						return float64(m.Histogram.GetSampleCount())
					}
					return m.Gauge.GetValue()
				}
			}
		}
		return -1
	}
	if v := val("weft_udp_packets_total", "direction", "rx"); v != 5 {
		t.Errorf("rx packets %v", v)
	}
	if v := val("weft_udp_dropped_packets_total", "reason", "spoofed-source"); v != 1 {
		t.Errorf("spoofed-source drops %v", v)
	}
	if v := val("weft_udp_batch_packets", "direction", "rx"); v < 1 {
		t.Errorf("rx batches %v", v)
	}
	if v := val("weft_udp_offload_mode", "tun", "none"); v != 1 {
		t.Errorf("offload mode metric %v (%v)", v, got["weft_udp_offload_mode"])
	}
}

func TestFactoryRejects(t *testing.T) {
	table, _ := route.NewFakeTable()
	f := Factory{Kernel: NewFakeKernel(NewFakeNet(), nodeA), Routes: table, Guard: encapguard.NewFake()}
	for _, raw := range []string{`{"type":"udp","port":0}`, `{"type":"udp","vni":1}`} {
		if _, err := f.New([]byte(raw)); err == nil {
			t.Errorf("%s accepted", raw)
		}
	}
	if _, err := (Factory{Kernel: f.Kernel, Routes: f.Routes}).New(nil); err == nil {
		t.Error("a factory without a guard built a backend")
	}
}
