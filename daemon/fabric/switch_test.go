package fabric

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/route"
)

// routeBackend is a fake backend built through the contract: it routes
// each peer that decapsulates its type through its own device, via the
// node's shared route writer, and keeps a goroutine running for its life.
type routeBackend struct {
	typ    string
	routes route.Writer
	life   context.Context
	done   chan struct{} // closed when the life goroutine ended
}

func (b *routeBackend) Type() string { return b.typ }

func (b *routeBackend) Start(life context.Context, _ backend.LocalNode) (backend.Published, error) {
	b.life, b.done = life, make(chan struct{})
	go func() { <-life.Done(); close(b.done) }() // a relay, a BGP server...
	return backend.Published{MTU: 1400}, nil
}

func (b *routeBackend) Apply(ctx context.Context, peers []backend.Peer) (backend.ApplyResult, error) {
	var rs []route.Route
	for _, p := range peers {
		if !p.Accepts(b.typ) {
			continue
		}
		for _, c := range p.PodCIDRs {
			rs = append(rs, route.Route{Dst: c, Gw: p.UnderlayIP, Dev: "weft." + b.typ, OnLink: true})
		}
	}
	n, err := b.routes.Apply(ctx, b.typ, rs)
	return backend.ApplyResult{Peers: len(rs), Changes: n}, err
}

func (b *routeBackend) Stop(ctx context.Context, cleanup bool) error {
	if !cleanup {
		return nil
	}
	_, err := b.routes.Release(ctx, b.typ)
	return err
}

type routeFactory struct {
	typ    string
	routes route.Writer
	built  *[]*routeBackend
}

func (f routeFactory) Type() string                         { return f.typ }
func (f routeFactory) ValidateConfig(json.RawMessage) error { return nil }
func (f routeFactory) Cleanup(context.Context) error        { return nil }
func (f routeFactory) New(json.RawMessage) (backend.Backend, error) {
	b := &routeBackend{typ: f.typ, routes: f.routes}
	*f.built = append(*f.built, b)
	return b, nil
}

func ended(b *routeBackend) bool {
	select {
	case <-b.done:
		return true
	case <-time.After(time.Second):
		return false
	}
}

func TestManagerSwitchHandsRoutesOver(t *testing.T) {
	tab, k := route.NewFakeTable()
	var built []*routeBackend
	m := NewManager([]backend.Factory{routeFactory{"a", tab, &built}, routeFactory{"b", tab, &built}}, slog.Default())
	peer := func(name, ip, cidr string, backends ...string) backend.Peer {
		return backend.Peer{Name: name, UnderlayIP: netip.MustParseAddr(ip), PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)}, Backends: backends}
	}
	p2, p3, p4 := peer("n2", "172.18.0.3", "10.244.2.0/24", "a", "b"), peer("n3", "172.18.0.4", "10.244.3.0/24", "a", "b"), peer("n4", "172.18.0.5", "10.244.4.0/24", "a")
	peers := []backend.Peer{p2, p3, p4}
	step := func(what string, want map[string]string) {
		t.Helper()
		if err := k.CheckOneOwner(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got := map[string]string{}
		for dst, o := range tab.Owners() {
			got[dst.String()] = o
		}
		for _, r := range k.Routes() {
			if o := k.Owners(r.Dst); len(o) != 1 || o[0] != got[r.Dst.String()] {
				t.Fatalf("%s: kernel route %v written by %v, the writer says %s", what, r.Route, o, got[r.Dst.String()])
			}
		}
		if !maps.Equal(got, want) || len(k.Routes()) != len(want) {
			t.Fatalf("%s: owners %v (kernel %v), want %v", what, got, k.Routes(), want)
		}
	}
	all := func(o string) map[string]string {
		return map[string]string{"10.244.2.0/24": o, "10.244.3.0/24": o, "10.244.4.0/24": "a"}
	}
	// The sync context ends right after Ensure; the backend's life must not.
	syncCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if _, err := m.Ensure(syncCtx, config.Backend{Type: "a", Raw: json.RawMessage(`{}`)}, backend.LocalNode{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	step("a started", map[string]string{})
	if _, err := m.Apply(context.Background(), peers); err != nil {
		t.Fatal(err)
	}
	step("a applied", all("a"))
	if built[0].life.Err() != nil {
		t.Fatal("backend a's lifetime ended with the sync context")
	}
	ctx := context.Background()
	if _, err := m.Ensure(ctx, config.Backend{Type: "b", Raw: json.RawMessage(`{}`)}, backend.LocalNode{}); err != nil {
		t.Fatal(err)
	}
	step("b started next to a", all("a"))
	if _, err := m.Apply(ctx, peers); err != nil { // b takes n2, n3 over; a is stopped with cleanup
		t.Fatal(err)
	}
	// n4 cannot decapsulate b: with a gone it has no route (whole-node switch).
	step("switched to b", map[string]string{"10.244.2.0/24": "b", "10.244.3.0/24": "b"})
	if !ended(built[0]) || built[1].life.Err() != nil {
		t.Fatalf("lifetimes after the switch: a ended %v, b %v", built[0].life.Err(), built[1].life.Err())
	}
	if err := m.Stop(ctx, true); err != nil {
		t.Fatal(err)
	}
	step("stopped with cleanup", map[string]string{})
	if !ended(built[1]) {
		t.Fatal("backend b's lifetime outlived Stop")
	}
	// Each handed-over destination changed owner by one replace.
	var ops []string
	for _, o := range k.Ops() {
		ops = append(ops, o.String())
	}
	want := []string{
		"replace 10.244.2.0/24 ->a", "replace 10.244.3.0/24 ->a", "replace 10.244.4.0/24 ->a",
		"replace 10.244.2.0/24 a->b", "replace 10.244.3.0/24 a->b", // the handover
		"delete 10.244.4.0/24 a->", // a's cleanup: only what b does not own
		"delete 10.244.2.0/24 b->", "delete 10.244.3.0/24 b->",
	}
	if !slices.Equal(ops, want) {
		t.Fatalf("route writes\n%s\nwant\n%s", fmt.Sprint(ops), fmt.Sprint(want))
	}
}
