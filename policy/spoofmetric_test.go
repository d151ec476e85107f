package policy

import (
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/policy/rules"
)

// countingKernel serves a WEFT-POL-SPOOF whose DROP counter the test sets,
// with counters only through SaveCounters (as iptables-save -c).
type countingKernel struct{ drops uint64 }

func (k *countingKernel) Restore(context.Context, string) error      { return nil }
func (k *countingKernel) IPSetRestore(context.Context, string) error { return nil }
func (k *countingKernel) IPSetSave(context.Context) (string, error)  { return "", nil }
func (k *countingKernel) Save(context.Context, string) (string, error) {
	return "*filter\n:WEFT-POL-SPOOF - [0:0]\n-A WEFT-POL-SPOOF " + k.rule() + "\nCOMMIT\n", nil
}
func (k *countingKernel) SaveCounters(context.Context, string) (string, error) {
	return fmt.Sprintf("*filter\n:WEFT-POL-SPOOF - [0:0]\n[%d:%d] -A WEFT-POL-SPOOF %s\nCOMMIT\n", k.drops, 60*k.drops, k.rule()), nil
}
func (k *countingKernel) rule() string {
	return rules.Rule{Action: rules.Action{Verb: rules.Drop}, Comment: rules.SpoofComment}.Text()
}

// TestSpoofedPacketsMetric: weft_policy_spoofed_packets_total follows the
// DROP rule's counter at each read-back, and when the rule is rewritten
// (its counter restarts) the metric keeps what was counted before.
func TestSpoofedPacketsMetric(t *testing.T) {
	k := &countingKernel{}
	w := NewWriter(k, nil)
	reg := prometheus.NewRegistry()
	if err := RegisterSpoofedPackets(reg, w); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ kernel, want uint64 }{{5, 5}, {9, 9}, {2, 11}, {7, 16}, {7, 16}} {
		k.drops = c.kernel
		if _, err := w.Apply(context.Background(), rules.Render(rules.DefaultConfig(), rules.Input{}), true); err != nil {
			t.Fatal(err)
		}
		if got := gathered(t, reg); got != float64(c.want) {
			t.Fatalf("kernel counter %d: metric %v, want %d", c.kernel, got, c.want)
		}
	}
	// Applies without a read-back do not read counters: the value stays.
	k.drops = 100
	if _, err := w.Apply(context.Background(), rules.Render(rules.DefaultConfig(), rules.Input{}), false); err != nil {
		t.Fatal(err)
	}
	if got := w.SpoofedPackets(); got != 16 {
		t.Fatalf("after an apply without read-back: %d, want 16", got)
	}
}

// gathered is the value of weft_policy_spoofed_packets_total in reg.
func gathered(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "weft_policy_spoofed_packets_total" && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("weft_policy_spoofed_packets_total not exported")
	return 0
}
