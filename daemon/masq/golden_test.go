package masq

import (
	"context"
	"testing"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

// TestGoldenKernel loads the masquerade and forward chains into a
// throwaway namespace with each backend and compares iptables-save of the
// nat and filter tables with testdata/masq.golden.
func TestGoldenKernel(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) {
			n := testutil.NewNS(t)
			r := iptables.Runner{Mode: mode, NetNS: n.Path()}
			ctx := context.Background()
			if _, err := New(r, network).Apply(ctx); err != nil {
				t.Fatal(err)
			}
			var got string
			for _, tb := range []string{"nat", "filter"} {
				save, err := r.Save(ctx, tb)
				if err != nil {
					t.Fatal(err)
				}
				got += iptables.NormalizeSave(save)
			}
			testutil.Golden(t, "masq.golden", got)
		})
	}
}
