package route

import (
	"context"
	"net/netip"
	"slices"
	"testing"
)

var (
	ctx = context.Background()
	pfx = netip.MustParsePrefix
	ip  = netip.MustParseAddr
)

func via(dst, gw, dev string) Route {
	return Route{Dst: pfx(dst), Gw: ip(gw), Dev: dev, OnLink: true}
}

func TestTableConvergesOwnedOnly(t *testing.T) {
	tab, k := NewFakeTable()
	foreign := KernelRoute{Route: Route{Dst: pfx("10.9.0.0/16"), Dev: "eth0", Gw: ip("172.18.0.1")}, Protocol: 3}
	k.Add(foreign)
	a := []Route{via("10.244.2.0/24", "10.244.2.0", "weft.vxlan"), via("10.244.3.0/24", "10.244.3.0", "weft.vxlan")}
	if n, err := tab.Apply(ctx, "vxlan", a); err != nil || n != 2 {
		t.Fatalf("apply: %d %v", n, err)
	}
	if n, err := tab.Apply(ctx, "vxlan", a); err != nil || n != 0 {
		t.Fatalf("converged apply changed %d: %v", n, err)
	}
	// Drift: a hand-deleted route comes back, a Weft route nobody wants goes.
	k.Remove(pfx("10.244.2.0/24"))
	k.Add(KernelRoute{Route: via("10.244.77.0/24", "10.244.77.0", "weft.vxlan"), Protocol: Protocol})
	if n, err := tab.Resync(ctx); err != nil || n != 2 {
		t.Fatalf("resync: %d %v", n, err)
	}
	if n, err := tab.Apply(ctx, "vxlan", a[:1]); err != nil || n != 1 {
		t.Fatalf("shrink: %d %v", n, err)
	}
	got := k.Routes()
	if len(got) != 2 || !slices.Contains(got, foreign) || got[1].Route != a[0] || got[1].Protocol != Protocol {
		t.Fatalf("table %+v", got)
	}
	// A destination held by a foreign route is refused, not taken.
	if _, err := tab.Apply(ctx, "vxlan", []Route{a[0], {Dst: pfx("10.9.0.0/16"), Dev: "weft.vxlan"}}); err == nil {
		t.Fatal("foreign route's destination taken silently")
	}
	if !slices.Contains(k.Routes(), foreign) {
		t.Fatal("foreign route touched")
	}
}

func TestTableHandsOverWithOneReplace(t *testing.T) {
	tab, k := NewFakeTable()
	dst := pfx("10.244.2.0/24")
	old := via("10.244.2.0/24", "10.244.2.0", "weft.vxlan")
	nw := Route{Dst: dst, Dev: "weft.udp"}
	mustApply := func(owner string, rs ...Route) {
		t.Helper()
		if _, err := tab.Apply(ctx, owner, rs); err != nil {
			t.Fatal(err)
		}
		if err := k.CheckOneOwner(); err != nil {
			t.Fatal(err)
		}
	}
	mustApply("vxlan", old)
	mustApply("udp", nw)
	mustApply("vxlan", old) // the old owner re-declaring does not take it back
	if o := k.Owners(dst); !slices.Equal(o, []string{"udp"}) || tab.Owners()[dst] != "udp" {
		t.Fatalf("owners %v", o)
	}
	// The new owner lets go while the old one still wants it: the old
	// one's route is back in one step.
	if _, err := tab.Release(ctx, "udp"); err != nil || k.CheckOneOwner() != nil {
		t.Fatal(err)
	}
	if _, err := tab.Release(ctx, "vxlan"); err != nil || len(k.Routes()) != 0 {
		t.Fatalf("release left %v: %v", k.Routes(), err)
	}
	want := []Op{{"replace", dst, "", "vxlan"}, {"replace", dst, "vxlan", "udp"}, {"replace", dst, "udp", "vxlan"}, {"delete", dst, "vxlan", ""}}
	if got := k.Ops(); !slices.Equal(got, want) {
		t.Fatalf("ops %v, want %v", got, want)
	}
}

func TestTableAdoptsLegacyStatic(t *testing.T) {
	tab, k := NewFakeTable()
	kept := via("10.244.2.0/24", "10.244.2.0", "weft.vxlan")
	gone := via("10.244.3.0/24", "10.244.3.0", "weft.vxlan")
	other := KernelRoute{Route: via("10.50.0.0/16", "10.50.0.1", "eth1"), Protocol: legacyProtocol}
	for _, r := range []Route{kept, gone} {
		k.Add(KernelRoute{Route: r, Protocol: legacyProtocol})
	}
	k.Add(other)
	tab.Adopt("weft.vxlan")
	if n, err := tab.Apply(ctx, "vxlan", []Route{kept}); err != nil || n != 2 {
		t.Fatalf("apply: %d %v", n, err)
	}
	got := k.Routes()
	want := []KernelRoute{{Route: kept, Protocol: Protocol}, other}
	if !slices.Equal(got, want) {
		t.Fatalf("table %+v, want %+v", got, want)
	}
}
