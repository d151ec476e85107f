package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/route"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

// rig is a bgp backend over the fake speaker and a fake kernel table.
type rig struct {
	sp     *Fake
	table  *route.Table
	kernel *route.Fake
	f      *Factory
	b      backend.Backend
	rep    *reporter
}

type reporter struct {
	mu sync.Mutex
	m  map[string]string
}

func (r *reporter) Detail(k, v string)  { r.mu.Lock(); r.m[k] = v; r.mu.Unlock() }
func (r *reporter) get(k string) string { r.mu.Lock(); defer r.mu.Unlock(); return r.m[k] }

type secrets map[string]string

func (s secrets) SecretKey(_ context.Context, name, key string) (string, error) {
	if v, ok := s[name+"/"+key]; ok {
		return v, nil
	}
	return "", errors.New("not found")
}

func newRig(t *testing.T, section string) *rig {
	t.Helper()
	table, kernel := route.NewFakeTable()
	r := &rig{sp: NewFake(), table: table, kernel: kernel, rep: &reporter{m: map[string]string{}}}
	r.f = &Factory{Speaker: r.sp, Routes: table, Report: r.rep, Log: slog.Default(),
		Secrets: secrets{"tor/password": "s3cret"}}
	b, err := r.f.New(json.RawMessage(section))
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
	t.Cleanup(func() { _ = b.Stop(context.Background(), true) })
	return r
}

// node i: underlay 10.0.0.i, pod CIDR 10.244.i.0/24, running bgp.
func peer(i int, labels map[string]string) backend.Peer {
	return backend.Peer{Name: fmt.Sprintf("node%d", i), UnderlayIP: addr(fmt.Sprintf("10.0.0.%d", i)),
		PodCIDRs: []netip.Prefix{pfx(fmt.Sprintf("10.244.%d.0/24", i))}, Backends: []string{IdentityNative}, // what a node on bgp Never announces
		Attrs: map[string]string{}, Labels: labels}
}

func local(labels map[string]string) backend.LocalNode {
	return backend.LocalNode{Name: "node1", UnderlayIP: addr("10.0.0.1"), UnderlayLink: "eth0", UnderlayMTU: 1500,
		PodCIDR: pfx("10.244.1.0/24"), Network: pfx("10.244.0.0/16"), Labels: labels}
}

func (r *rig) start(t *testing.T, l backend.LocalNode) backend.Published {
	t.Helper()
	pub, err := r.b.Start(context.Background(), l)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func (r *rig) apply(t *testing.T, peers ...backend.Peer) backend.ApplyResult {
	t.Helper()
	res, err := r.b.Apply(context.Background(), peers)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// kernelRoutes renders the fake kernel's routes, sorted.
func (r *rig) kernelRoutes() string {
	var out []string
	for _, kr := range r.kernel.Routes() {
		out = append(out, fmt.Sprintf("%s proto %d", kr.Route, kr.Protocol))
	}
	slices.Sort(out)
	return strings.Join(out, "; ")
}

func (r *rig) waitRoutes(t *testing.T, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.kernelRoutes() != want {
		if time.Now().After(deadline) {
			t.Fatalf("kernel routes\n got %s\nwant %s", r.kernelRoutes(), want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func peerAddrs(ps []Peer) string {
	var out []string
	for _, p := range ps {
		s := p.Addr.String()
		if p.RouteReflectorClient {
			s += "(rr-client)"
		}
		if p.Password != "" {
			s += "(md5)"
		}
		out = append(out, s)
	}
	return strings.Join(out, " ")
}

func cand(prefix, nh, from string) []Candidate {
	return []Candidate{{Prefix: pfx(prefix), NextHop: addr(nh), From: addr(from)}}
}

func TestBackendMeshInstallsLearnedRoutes(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	pub := r.start(t, local(nil))
	if pub.MTU != 1500 || pub.Attrs[AnnoSpeakerASN] != "64512" {
		t.Fatalf("published %+v", pub)
	}
	ok, cfg := r.sp.Running()
	if !ok || cfg.ListenAddr != addr("10.0.0.1") || cfg.RouterID != addr("10.0.0.1") || cfg.ASN != DefaultASN {
		t.Fatalf("speaker running %v with %+v", ok, cfg)
	}
	// Graceful restart: the own CIDR is advertised before any session.
	if adv := r.sp.Advertised(); len(adv) != 1 || adv[0] != pfx("10.244.1.0/24") || len(r.sp.Peers()) != 0 {
		t.Fatalf("after Start: advertised %v, peers %v", adv, r.sp.Peers())
	}
	// node4 does not run bgp (yet): no session with it.
	p4 := peer(4, nil)
	p4.Backends = []string{"vxlan"}
	r.apply(t, peer(2, nil), peer(3, nil), p4)
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.2 10.0.0.3" {
		t.Fatalf("sessions %s", got)
	}
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"),
		cand("10.244.4.0/24", "10.0.0.2", "10.0.0.2"), // not node2's
		cand("0.0.0.0/0", "10.0.0.3", "10.0.0.3"))
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87")
	res := r.apply(t, peer(2, nil), peer(3, nil), p4)
	if res.Peers != 2 || len(res.Problems) != 0 {
		t.Fatalf("apply result %+v", res)
	}
	if d := r.rep.get(DetailKey); !strings.Contains(d, "sessions 2/2 established") || !strings.Contains(d, "routes learned 2, rejected 2") {
		t.Fatalf("readyz detail %q", d)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(r.f)
	got := map[string]float64{}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			got[mf.GetName()] += m.GetGauge().GetValue() + m.GetCounter().GetValue()
		}
	}
	if got["weft_bgp_sessions_established"] != 2 || got["weft_bgp_sessions"] != 2 || got["weft_bgp_routes_learned"] != 2 ||
		got["weft_bgp_routes_rejected_total"] != 2 || got["weft_bgp_session_established"] != 2 || got["weft_bgp_ipip_mode"] != 1 {
		t.Fatalf("metrics %v", got)
	}
	// A withdrawn route goes from the kernel, once the backend is warm
	// (node4, not on bgp, kept the warmup going; it leaves).
	r.apply(t, peer(2, nil), peer(3, nil))
	r.sp.Inject(cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"))
	r.waitRoutes(t, "10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87")
}

func TestBackendRouteReflectorLabels(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	r.start(t, local(nil))
	rr := map[string]string{LabelRouteReflector: "true"}
	r.apply(t, peer(2, nil), peer(3, rr), peer(4, nil))
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.3" {
		t.Fatalf("a client peers with the reflector only, got %s", got)
	}
	// The local node is labelled a reflector too: no restart, the next
	// Apply re-forms the sessions.
	u, ok := r.b.(backend.LocalUpdater)
	if !ok {
		t.Fatal("the bgp backend does not follow local label changes")
	}
	u.UpdateLocal(local(rr))
	r.apply(t, peer(2, nil), peer(3, rr), peer(4, nil))
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.2(rr-client) 10.0.0.3 10.0.0.4(rr-client)" {
		t.Fatalf("a reflector peers with every node, clients marked, got %s", got)
	}
	// The local node is the only reflector.
	r.apply(t, peer(2, nil), peer(3, nil), peer(4, nil))
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.2(rr-client) 10.0.0.3(rr-client) 10.0.0.4(rr-client)" {
		t.Fatalf("the only reflector reflects for every node, got %s", got)
	}
	// No reflector left: full mesh again.
	u.UpdateLocal(local(nil))
	r.apply(t, peer(2, nil), peer(3, nil), peer(4, nil))
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.2 10.0.0.3 10.0.0.4" {
		t.Fatalf("mesh again, got %s", got)
	}
	if ok, _ := r.sp.Running(); !ok {
		t.Fatal("the speaker was stopped by a label change")
	}
}

func TestBackendExternalPeerAcceptedPrefixes(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never","peers":[
		{"peerIP":"10.0.0.254","asNumber":65000,"passwordSecretRef":{"name":"tor","key":"password"},
		 "nodeSelector":{"rack":"a"},"acceptedPrefixes":["198.51.100.0/24"]},
		{"peerIP":"10.0.0.253","asNumber":65001,"passwordSecretRef":{"name":"missing","key":"password"}}]}`)
	r.start(t, local(map[string]string{"rack": "a"}))
	res := r.apply(t, peer(2, nil))
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.2 10.0.0.254(md5)" {
		t.Fatalf("sessions %s", got)
	}
	if !slices.ContainsFunc(res.Problems, func(p string) bool {
		return strings.Contains(p, "10.0.0.253") && strings.Contains(p, "kube-system/missing")
	}) {
		t.Fatalf("a peer whose password is unreadable must get no session and be reported: %v", res.Problems)
	}
	tor := "10.0.0.254"
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"),
		cand("198.51.100.0/25", tor, tor), // inside acceptedPrefixes
		cand("0.0.0.0/0", tor, tor),       // default route
		cand("203.0.113.0/24", tor, tor),  // outside
		cand("10.244.2.0/25", tor, tor))   // inside a pod CIDR
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 198.51.100.0/25 via 10.0.0.254 dev eth0 proto 87")
	if s := r.f.Snapshot(); s.Rejected != 3 || s.Learned != 2 {
		t.Fatalf("snapshot %+v", s)
	}
	// The node loses the selected label: the session goes.
	r.b.(backend.LocalUpdater).UpdateLocal(local(nil))
	r.apply(t, peer(2, nil))
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.2" {
		t.Fatalf("sessions after the label went: %s", got)
	}
}

// A switch from vxlan: each destination is handed over by one replace,
// never deleted, while the sessions come up; then the learned route.
func TestBackendRouteHandover(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	ctx := context.Background()
	if _, err := r.table.Apply(ctx, "vxlan", []route.Route{
		{Dst: pfx("10.244.2.0/24"), Gw: addr("10.244.2.0"), Dev: "weft.vxlan", OnLink: true},
		{Dst: pfx("10.244.3.0/24"), Gw: addr("10.244.3.0"), Dev: "weft.vxlan", OnLink: true}}); err != nil {
		t.Fatal(err)
	}
	r.start(t, local(nil))
	p3 := peer(3, nil)
	p3.Backends = []string{"vxlan"} // not switched yet: stays on vxlan
	r.apply(t, peer(2, nil), p3)
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.244.3.0 dev weft.vxlan onlink proto 87")
	if o := r.table.Owners(); o[pfx("10.244.2.0/24")] != Type || o[pfx("10.244.3.0/24")] != "vxlan" {
		t.Fatalf("owners %v", o)
	}
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"))
	r.apply(t, peer(2, nil), p3)
	// node3 switches: kept (by its Node object) until its route is learned.
	p3.Backends = []string{Type, "vxlan"}
	r.apply(t, peer(2, nil), p3)
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87")
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"))
	r.apply(t, peer(2, nil), p3)
	if _, err := r.table.Release(ctx, "vxlan"); err != nil {
		t.Fatal(err)
	}
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87")
	for _, op := range r.kernel.Ops() {
		if op.Kind != "replace" {
			t.Fatalf("the handed-over destination saw %s (ops %v)", op, r.kernel.Ops())
		}
	}
	if err := r.kernel.CheckOneOwner(); err != nil {
		t.Fatal(err)
	}
}

// A restarted weftd finds its predecessor's routes and keeps them while the
// sessions come up; once warm, a route nobody advertises goes.
func TestBackendRestartKeepsRoutesUntilLearned(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	for i := 2; i <= 3; i++ {
		r.kernel.Add(route.KernelRoute{Route: route.Route{Dst: pfx(fmt.Sprintf("10.244.%d.0/24", i)),
			Gw: addr(fmt.Sprintf("10.0.0.%d", i)), Dev: "eth0"}, Protocol: route.Protocol})
	}
	r.start(t, local(nil))
	r.apply(t, peer(2, nil), peer(3, nil))
	if len(r.kernel.Ops()) != 0 {
		t.Fatalf("a restart rewrote routes before learning anything: %v", r.kernel.Ops())
	}
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"))
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87")
	for deadline := time.Now().Add(5 * time.Second); r.f.Snapshot().Learned != 2; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never learned both routes: %+v", r.f.Snapshot())
		}
	}
	if len(r.kernel.Ops()) != 0 {
		t.Fatalf("learned routes equal to the kept ones were rewritten: %v", r.kernel.Ops())
	}
	// Warm now: node3 withdraws, its route goes.
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"))
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87")
}

func TestBackendStop(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	r.start(t, local(nil))
	r.apply(t, peer(2, nil))
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"))
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87")
	ctx := context.Background()
	// Without cleanup (weftd exits): speaker and routes stay.
	if err := r.b.Stop(ctx, false); err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.sp.Running(); !ok || r.kernelRoutes() == "" {
		t.Fatalf("stop without cleanup: speaker running %v, routes %q", ok, r.kernelRoutes())
	}
	if d := r.rep.get(DetailKey); d != "" {
		t.Fatalf("a stopped backend still reports %q", d)
	}
	// A new bgp section in the same process takes the speaker over.
	b2, err := r.f.New(json.RawMessage(`{"type":"bgp","ipipMode":"Never","asNumber":64600}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Start(ctx, local(nil)); err != nil {
		t.Fatal(err)
	}
	if ok, cfg := r.sp.Running(); !ok || cfg.ASN != 64600 {
		t.Fatalf("restarted speaker running %v %+v", ok, cfg)
	}
	// With cleanup (switching away): speaker stopped, routes released.
	if err := b2.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	if ok, _ := r.sp.Running(); ok || r.kernelRoutes() != "" {
		t.Fatalf("stop with cleanup: speaker running %v, routes %q", ok, r.kernelRoutes())
	}
}

func TestBackendIPIPModesNeedIPIP(t *testing.T) {
	for _, mode := range []string{"Always", "CrossSubnet", ""} {
		sec := `{"type":"bgp"}`
		if mode != "" {
			sec = `{"type":"bgp","ipipMode":"` + mode + `"}`
		}
		r := newRig(t, sec)
		_, err := r.b.Start(context.Background(), local(nil))
		want := mode
		if want == "" {
			want = "Always" // the default
		}
		if err == nil || !strings.Contains(err.Error(), "ipipMode "+want+" is not available") {
			t.Fatalf("%s: Start error %v", sec, err)
		}
		if ok, _ := r.sp.Running(); ok {
			t.Fatalf("%s: the speaker started anyway", sec)
		}
	}
}

func TestBackendASNAnnotation(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	l := local(nil)
	l.Attrs = map[string]string{AnnoASN: "65010"}
	if pub := r.start(t, l); pub.Attrs[AnnoSpeakerASN] != "65010" {
		t.Fatalf("published %v", pub.Attrs)
	}
	p2, p3 := peer(2, nil), peer(3, nil)
	p2.Attrs[AnnoASN] = "65020"
	p3.Attrs[AnnoASN] = "banana"
	res := r.apply(t, p2, p3)
	ps := r.sp.Peers()
	if len(ps) != 1 || ps[0].Addr != addr("10.0.0.2") || ps[0].ASN != 65020 {
		t.Fatalf("peers %+v", ps)
	}
	if len(res.Problems) == 0 || !strings.Contains(res.Problems[0], `"banana"`) {
		t.Fatalf("problems %v", res.Problems)
	}
}
