package vxlan

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
)

// TestBackendKeepsGuardInStep: every Apply hands the guard exactly the
// peers it programs (underlay IP -> pod CIDRs), a port change reaches the
// guard, a restart rewrites nothing, and a cleanup stop removes it.
func TestBackendKeepsGuardInStep(t *testing.T) {
	ctx := context.Background()
	k := NewFake(map[string]int{"eth0": 1500})
	g := encapguard.NewFake()
	b := New(Config{VNI: 1, Port: 8472}, k, k.Routes(), g, slog.Default())
	if _, err := b.Start(ctx, local()); err != nil {
		t.Fatal(err)
	}
	peers := []backend.Peer{
		peer("n2", "172.18.0.3", "02:00:00:00:00:22", "10.244.2.0/24"),
		peer("n3", "172.18.0.4", "02:00:00:00:00:33", "10.244.3.0/24"),
		peer("bad", "172.18.0.5", "not-a-mac", "10.244.5.0/24"), // left out by Desired: not admitted either
	}
	if _, err := b.Apply(ctx, peers); err != nil {
		t.Fatal(err)
	}
	s, ok := g.Spec(Type)
	if !ok || s.Encap.Port != 8472 || len(s.Peers) != 2 {
		t.Fatalf("guard spec %+v", s)
	}
	for _, c := range []struct {
		sender, inner string
		want          bool
	}{
		{"172.18.0.3", "10.244.2.9", true},
		{"172.18.0.3", "10.244.3.9", false}, // n2 forging n3's pod
		{"172.18.0.4", "10.244.3.9", true},
		{"172.18.0.5", "10.244.5.9", false}, // not a programmed peer
		{"172.18.0.99", "10.244.2.9", false},
	} {
		if got := g.Admits(Type, netip.MustParseAddr(c.sender), netip.MustParseAddr(c.inner)); got != c.want {
			t.Errorf("admits %s inner %s = %v, want %v", c.sender, c.inner, got, c.want)
		}
	}
	// Only to this node's pods: a peer cannot relay through this node.
	if !g.AdmitsDst(Type, netip.MustParseAddr("10.244.1.7")) || g.AdmitsDst(Type, netip.MustParseAddr("10.244.3.9")) ||
		g.AdmitsDst(Type, netip.MustParseAddr("172.18.0.2")) {
		t.Errorf("guard's local destinations %v, want this node's pod CIDR 10.244.1.0/24", s.Local)
	}
	w := g.Writes
	if _, err := b.Apply(ctx, peers); err != nil || g.Writes != w {
		t.Fatalf("converged apply rewrote the guard: %v", err)
	}
	if _, err := b.Apply(ctx, peers[:1]); err != nil {
		t.Fatal(err)
	}
	if g.Admits(Type, netip.MustParseAddr("172.18.0.4"), netip.MustParseAddr("10.244.3.9")) {
		t.Fatal("removed peer still admitted")
	}
	// Port change: another identity, whose instance runs beside this one
	// (daemon/fabric) with its own guard; this one's stays until it stops.
	if err := b.Stop(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec(Type); !ok {
		t.Fatal("stop without cleanup removed the guard")
	}
	b2 := New(Config{VNI: 1, Port: 4789}, k, k.Routes(), g, slog.Default())
	if _, err := b2.Start(ctx, local()); err != nil {
		t.Fatal(err)
	}
	if _, err := b2.Apply(ctx, peers[:1]); err != nil {
		t.Fatal(err)
	}
	kind2 := Config{VNI: 1, Port: 4789}.GuardKind()
	if s, _ := g.Spec(kind2); s.Encap.Port != 4789 {
		t.Fatalf("guard port %d after port change", s.Encap.Port)
	}
	if err := b2.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec(kind2); ok {
		t.Fatal("cleanup stop left the guard")
	}
}
