package masq

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
	"github.com/weftnet/weft/internal/testutil"
)

// oldNames is the golden state as weftd before issue 9 wrote it (the
// chains' earlier names), read from testdata/masq.golden.
func oldNames(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("testdata/masq.golden")
	if err != nil {
		t.Fatal(err)
	}
	return strings.NewReplacer(ChainNAT, retiredNAT, ChainForward, retiredForward).Replace(string(b))
}

func kernelDump(t *testing.T, k Tables) string {
	t.Helper()
	var got string
	for _, tb := range []string{"nat", "filter"} {
		save, err := k.Save(context.Background(), tb)
		if err != nil {
			t.Fatal(err)
		}
		got += iptables.NormalizeSave(save)
	}
	return got
}

// TestGoldenFake: the fake table holds, after one Apply, exactly the
// chains testdata/masq.golden holds (read from the kernel, see
// TestGoldenKernel), and one Apply over the chains of the old names
// leaves the same.
func TestGoldenFake(t *testing.T) {
	ctx := context.Background()
	f := table.NewFake()
	if _, err := New(f, network).Apply(ctx); err != nil {
		t.Fatal(err)
	}
	testutil.Golden(t, "masq.golden", f.Dump("nat", "filter"))

	up := table.NewFake()
	if err := up.Restore(ctx, oldNames(t)); err != nil {
		t.Fatal(err)
	}
	if wrote, err := New(up, network).Apply(ctx); err != nil || !wrote {
		t.Fatalf("upgrade apply: %v %v", wrote, err)
	}
	testutil.Golden(t, "masq.golden", up.Dump("nat", "filter"))
}

// TestGoldenKernel loads the masquerade and forward chains into a
// throwaway namespace with each backend and compares iptables-save of the
// nat and filter tables with testdata/masq.golden; then it does the same
// over a namespace holding the chains of the old names (an upgrade).
func TestGoldenKernel(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := context.Background()
			r := iptables.Runner{Mode: mode, NetNS: testutil.NewNS(t).Path()}
			if _, err := New(r, network).Apply(ctx); err != nil {
				t.Fatal(err)
			}
			testutil.Golden(t, "masq.golden", kernelDump(t, r))

			up := iptables.Runner{Mode: mode, NetNS: testutil.NewNS(t).Path()}
			if err := up.Restore(ctx, oldNames(t)); err != nil {
				t.Fatal(err)
			}
			if _, err := New(up, network).Apply(ctx); err != nil {
				t.Fatal(err)
			}
			testutil.Golden(t, "masq.golden", kernelDump(t, up))
		})
	}
}
