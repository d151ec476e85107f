package bgp

import (
	"context"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
)

type fakeIPIP struct {
	mu      sync.Mutex
	t       *fakeTunnel
	removed int
	viaPeer bool             // routes as to the kernel ipip link
	guard   *encapguard.Fake // when set, SetPeers notes whether its ipip spec was there
	fail    error            // when set, Remove and the tunnel's Stop(true) fail with it
}

type fakeTunnel struct {
	f       *fakeIPIP
	mtu     int
	peers   []string
	stopped string
	// unguarded counts SetPeers calls made while fakeIPIP.guard had no
	// IP-in-IP spec (a kernel link would then come up open).
	unguarded int
}

func (f *fakeIPIP) Start(_ context.Context, _ backend.LocalNode, mtu int) (Tunnel, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.t = &fakeTunnel{f: f, mtu: mtu}
	return f.t, nil
}
func (f *fakeIPIP) Remove() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.removed++
	return nil
}

func (t *fakeTunnel) Device() string               { return "weft.ipip" }
func (t *fakeTunnel) Impl() string                 { return "fake" }
func (t *fakeTunnel) UnderlaySubnet() netip.Prefix { return pfx("10.0.0.0/24") }
func (t *fakeTunnel) ViaPeer() bool                { return t.f.viaPeer }
func (t *fakeTunnel) SetPeers(_ []netip.Prefix, peers []backend.Peer) []string {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if g := t.f.guard; g != nil {
		if _, ok := g.Spec("ipip"); !ok {
			t.unguarded++
		}
	}
	t.peers = nil
	for _, p := range peers {
		t.peers = append(t.peers, p.UnderlayIP.String())
	}
	return nil
}
func (t *fakeTunnel) Stop(remove bool) error {
	t.f.mu.Lock()
	defer t.f.mu.Unlock()
	if remove && t.f.fail != nil {
		return t.f.fail
	}
	t.stopped = map[bool]string{true: "removed", false: "kept"}[remove]
	return nil
}

func newIPIPRig(t *testing.T, section string) (*rig, *fakeIPIP) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	fi := &fakeIPIP{}
	r.f.IPIP, r.f.Guard = fi, encapguard.NewFake()
	b, err := r.f.New(json.RawMessage(section))
	if err != nil {
		t.Fatal(err)
	}
	r.b = b
	t.Cleanup(func() { _ = b.Stop(context.Background(), true) })
	return r, fi
}

func TestBackendIPIPAlways(t *testing.T) {
	r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"Always","peers":[{"peerIP":"10.0.0.254","asNumber":65000,"acceptedPrefixes":["198.51.100.0/24"]}]}`)
	if pub := r.start(t, local(nil)); pub.MTU != 1480 || fi.t == nil || fi.t.mtu != 1480 {
		t.Fatalf("published %+v, tunnel %+v", pub, fi.t)
	}
	p4 := peer(4, nil)
	p4.Backends = []string{"vxlan"}
	r.apply(t, peer(2, nil), peer(3, nil), p4)
	// Every node is a known sender (one may send IP-in-IP as soon as it
	// sees this node announce it); routes go to the bgp nodes only.
	if got := strings.Join(fi.t.peers, " "); got != "10.0.0.2 10.0.0.3 10.0.0.4" {
		t.Fatalf("tunnel peers %q: want every node", got)
	}
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"),
		cand("198.51.100.0/24", "10.0.0.254", "10.0.0.254"))
	// Node routes into the tunnel; the external router's route is plain.
	r.waitRoutes(t, "10.244.2.0/24 dev weft.ipip proto 87; 10.244.3.0/24 dev weft.ipip proto 87; 198.51.100.0/24 via 10.0.0.254 dev eth0 proto 87")
	r.apply(t, peer(2, nil), peer(3, nil), p4)
	if d := r.rep.get(DetailKey); !strings.HasPrefix(d, "ipipMode Always (fake ipip); sessions 3/3 established") {
		t.Fatalf("readyz detail %q", d)
	}
	if err := r.b.Stop(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if fi.t.stopped != "removed" || r.kernelRoutes() != "" {
		t.Fatalf("cleanup: tunnel %q, routes %q", fi.t.stopped, r.kernelRoutes())
	}
	if err := r.f.Cleanup(context.Background()); err != nil || fi.removed != 1 {
		t.Fatalf("factory cleanup: %v, removed %d", err, fi.removed)
	}
}

// With the kernel ipip link (ViaPeer) routes into weft.ipip name the
// owner's underlay address, onlink: the kernel link is remote-any and
// takes the outer destination from the gateway. CrossSubnet keeps plain
// routes inside the underlay subnet.
func TestBackendKernelIPIPRoutes(t *testing.T) {
	r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"CrossSubnet"}`)
	fi.viaPeer = true
	r.start(t, local(nil))
	far := peer(5, nil)
	far.UnderlayIP = addr("10.0.1.5")
	r.apply(t, peer(2, nil), far)
	want := "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.5.0/24 via 10.0.1.5 dev weft.ipip onlink proto 87"
	r.waitRoutes(t, want)
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.5.0/24", "10.0.1.5", "10.0.1.5"))
	r.apply(t, peer(2, nil), far)
	r.waitRoutes(t, want)
}

func TestBackendIPIPCrossSubnet(t *testing.T) {
	r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"CrossSubnet"}`)
	r.start(t, local(nil))
	far := peer(5, nil)
	far.UnderlayIP = addr("10.0.1.5") // another underlay subnet
	r.apply(t, peer(2, nil), far)
	// Before anything is learned the kept routes follow the same rule.
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.5.0/24 dev weft.ipip proto 87")
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.5.0/24", "10.0.1.5", "10.0.1.5"))
	r.apply(t, peer(2, nil), far)
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.5.0/24 dev weft.ipip proto 87")
	if !slices.Equal(fi.t.peers, []string{"10.0.0.2", "10.0.1.5"}) {
		t.Fatalf("tunnel peers %v", fi.t.peers)
	}
	// weftd exits: the device and routes stay.
	if err := r.b.Stop(context.Background(), false); err != nil || fi.t.stopped != "kept" || r.kernelRoutes() == "" {
		t.Fatalf("stop without cleanup: %v, tunnel %q, routes %q", err, fi.t.stopped, r.kernelRoutes())
	}
}

// With IP-in-IP the guard admits every known node, each for its own pod
// CIDRs only (a node not yet announcing bgp may switch to it before this
// node sees its announcement, see daemon/fabric), and goes with the backend (cleanup) or when a later section
// says Never; without a guard the IP-in-IP modes refuse to start.
func TestBackendIPIPGuard(t *testing.T) {
	r, _ := newIPIPRig(t, `{"type":"bgp","ipipMode":"Always"}`)
	g := r.f.Guard.(*encapguard.Fake)
	r.start(t, local(nil))
	p4 := peer(4, nil)
	p4.Backends = []string{"vxlan"}
	r.apply(t, peer(2, nil), peer(3, nil), p4)
	s, ok := g.Spec("ipip")
	if !ok || s.Encap != encapguard.IPIP() || len(s.Peers) != 3 {
		t.Fatalf("ipip guard %+v (applied %v), want the three known nodes", s, ok)
	}
	for _, c := range []struct {
		sender, inner string
		ok            bool
	}{{"10.0.0.2", "10.244.2.7", true}, {"10.0.0.3", "10.244.3.7", true},
		{"10.0.0.2", "10.244.3.7", false},   // someone else's pod address
		{"10.0.0.4", "10.244.4.7", true},    // not on bgp yet: its own pods only
		{"10.0.0.4", "10.244.2.7", false},   // ... not another node's
		{"10.0.0.9", "10.244.2.7", false}} { // a stranger
		if got := g.Admits("ipip", addr(c.sender), addr(c.inner)); got != c.ok {
			t.Errorf("IP-in-IP from %s with inner source %s admitted %v, want %v", c.sender, c.inner, got, c.ok)
		}
	}
	if !g.AdmitsDst("ipip", addr("10.244.1.7")) || g.AdmitsDst("ipip", addr("10.244.2.7")) || g.AdmitsDst("ipip", addr("10.0.0.1")) {
		t.Errorf("ipip guard's local destinations %v, want this node's pod CIDR 10.244.1.0/24", s.Local)
	}
	// node4 switches to bgp: still admitted at the next Apply.
	p4.Backends = []string{Type}
	r.apply(t, peer(2, nil), peer(3, nil), p4)
	if !g.Admits("ipip", addr("10.0.0.4"), addr("10.244.4.7")) {
		t.Error("node4 on bgp not admitted")
	}
	// weftd exits: the guard stays for the next one.
	ctx := context.Background()
	if err := r.b.Stop(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec("ipip"); !ok {
		t.Fatal("stop without cleanup removed the guard")
	}
	// A new section in the same process says Never: the guard goes.
	b2, err := r.f.New(json.RawMessage(`{"type":"bgp","ipipMode":"Never"}`))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Start(ctx, local(nil)); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec("ipip"); ok {
		t.Fatal("ipipMode Never kept the IP-in-IP guard")
	}
	if err := b2.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	// Always again, then switching away (cleanup): the guard goes.
	b3, _ := r.f.New(json.RawMessage(`{"type":"bgp","ipipMode":"CrossSubnet"}`))
	if _, err := b3.Start(ctx, local(nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := b3.Apply(ctx, []backend.Peer{peer(2, nil)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec("ipip"); !ok {
		t.Fatal("ipipMode CrossSubnet has no IP-in-IP guard")
	}
	if err := b3.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec("ipip"); ok {
		t.Fatal("stop with cleanup kept the IP-in-IP guard")
	}
	// Factory cleanup (uninstall) removes one a crashed weftd left.
	if _, err := g.Apply(ctx, encapguard.Spec{Encap: encapguard.IPIP()}); err != nil {
		t.Fatal(err)
	}
	if err := r.f.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec("ipip"); ok {
		t.Fatal("factory cleanup kept the IP-in-IP guard")
	}
	// No guard: IP-in-IP modes refuse to start.
	r.f.Guard = nil
	b4, _ := r.f.New(json.RawMessage(`{"type":"bgp","ipipMode":"Always"}`))
	if _, err := b4.Start(ctx, local(nil)); err == nil || !strings.Contains(err.Error(), "guard") {
		t.Fatalf("Start without a guard: %v", err)
	}
}
