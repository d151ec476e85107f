package encapguard

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
	"github.com/weftnet/weft/internal/testutil"
)

// goldenSpecs are a guard of two peers (one chain) with the inner
// destination check and one of 40 peers (a tree of chains) without it.
func goldenSpecs() map[string]Spec {
	var many []Peer
	for i := range 40 {
		many = append(many, Peer{UnderlayIP: netip.AddrFrom4([4]byte{192, 168, 1, byte(i + 1)}),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(100 + i), 0}), 24)}})
	}
	two := spec(8472, peer1, peer2)
	// a range and a single address, as iptables-save prints each
	two.Local = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24"), netip.MustParsePrefix("10.245.0.9/32")}
	return map[string]Spec{"guard-2.golden": two, "guard-40.golden": spec(8472, many...)}
}

// TestGoldenKernel loads each golden guard into a throwaway namespace with
// each backend and compares iptables-save of the raw table with its file.
func TestGoldenKernel(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		for name, s := range goldenSpecs() {
			t.Run(fmt.Sprintf("%s/%s", mode, name), func(t *testing.T) {
				n := testutil.NewNS(t)
				r := iptables.Runner{Mode: mode, NetNS: n.Path()}
				ctx := context.Background()
				if _, err := NewIPTables(r).Apply(ctx, s); err != nil {
					t.Fatal(err)
				}
				save, err := r.Save(ctx, "raw")
				if err != nil {
					t.Fatal(err)
				}
				testutil.Golden(t, name, iptables.NormalizeSave(save))
			})
		}
	}
}

// TestGoldenFake: the fake table holds, after one Apply, exactly what
// each golden file (read from the kernel, see TestGoldenKernel) holds, and
// a second Apply writes nothing.
func TestGoldenFake(t *testing.T) {
	for name, s := range goldenSpecs() {
		t.Run(name, func(t *testing.T) {
			f := table.NewFake()
			g := NewIPTables(f)
			ctx := context.Background()
			if n, err := g.Apply(ctx, s); err != nil || n != 2 {
				t.Fatalf("apply: %d writes, %v", n, err)
			}
			testutil.Golden(t, name, f.Dump("raw"))
			if n, err := g.Apply(ctx, s); err != nil || n != 0 {
				t.Fatalf("second apply: %d writes, %v", n, err)
			}
		})
	}
}
