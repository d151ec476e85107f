package table

import (
	"context"

	"testing"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

// TestConvergeAndRepairKernel runs the same scenario (the same restore
// texts) in a throwaway namespace with each iptables backend: the kernel
// converges and is repaired by one Apply exactly as the fake is, and
// iptables-save prints byte for byte what the fake dumps.
func TestConvergeAndRepairKernel(t *testing.T) {
	testutil.RequireRoot(t)
	f := NewFake()
	fakeFirst, fakeRepaired := testConverge(t, f, func() int { return f.Restores })
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) {
			n := testutil.NewNS(t)
			k := &countingKernel{Runner: iptables.Runner{Mode: mode, NetNS: n.Path()}}
			first, repaired := testConverge(t, k, func() int { return k.n })
			if first != fakeFirst {
				t.Errorf("kernel after the first Apply:\n%s\nfake:\n%s", first, fakeFirst)
			}
			if repaired != fakeRepaired {
				t.Errorf("kernel after the repair:\n%s\nfake:\n%s", repaired, fakeRepaired)
			}
		})
	}
}

// countingKernel counts the restores a real Runner makes.
type countingKernel struct {
	iptables.Runner
	n int
}

func (k *countingKernel) Restore(ctx context.Context, text string) error {
	if err := k.Runner.Restore(ctx, text); err != nil {
		return err
	}
	k.n++
	return nil
}
