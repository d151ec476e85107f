package policy

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/policy/rules"
	rt "github.com/weftnet/weft/policy/rules/rulestest"
)

// goldenState is the rendered policy of node 1 of the fixture cluster
// under a few policies that use every kind of rule the renderer makes:
// default deny, namespace and pod selectors, named and ranged ports, an
// ipBlock with an exception, egress, SCTP.
func goldenState() *rules.State {
	c := rt.NewCluster()
	return c.Render(1,
		rt.NP("x", "deny", nil, rt.TIn),
		rt.WithIngress(rt.NP("x", "from-y", map[string]string{"pod": "a"}, rt.TIn),
			rt.In([]rt.From{{NamespaceSelector: rt.LS("ns", "y")}}, rt.PPort(corev1.ProtocolTCP, rt.Named("http")))),
		rt.WithIngress(rt.NP("x", "block", nil, rt.TIn),
			rt.In([]rt.From{{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16", Except: []string{"10.244.2.0/24"}}}}, rt.PPort(corev1.ProtocolTCP, rt.Num(80), 81))),
		rt.WithEgress(rt.NP("y", "out", nil, rt.TEg),
			rt.Eg([]rt.From{{NamespaceSelector: rt.Expr("ns", metav1.LabelSelectorOpIn, "x", "z"), PodSelector: rt.LS("pod", "b")}}, rt.PPort(corev1.ProtocolUDP, rt.Num(80)))),
		rt.WithIngress(rt.NP("z", "sctp", map[string]string{"pod": "a"}, rt.TIn), rt.In(nil, rt.PPort(corev1.ProtocolSCTP, rt.Num(9), 19))),
	)
}

// TestGoldenPolicyKernel loads the golden policy into a throwaway
// namespace's own iptables with each backend and compares what
// iptables-save reads back with testdata/policy-filter.golden (written
// with -update from the kernel).
func TestGoldenPolicyKernel(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) {
			n := testutil.NewNS(t)
			r := iptables.Runner{Mode: mode, NetNS: n.Path()}
			w := NewWriter(r, nil)
			ctx := context.Background()
			t.Cleanup(func() { _, _ = w.Apply(ctx, &rules.State{}, true) })
			if _, err := w.Apply(ctx, goldenState(), true); err != nil {
				t.Fatal(err)
			}
			save, err := r.Save(ctx, "filter")
			if err != nil {
				t.Fatal(err)
			}
			testutil.Golden(t, "policy-filter.golden", iptables.NormalizeSave(save))
		})
	}
}

// goldenFake returns a fake table and sets holding the golden policy and
// the Writer that put it there.
func goldenFake(t *testing.T) (*table.Fake, *Writer) {
	t.Helper()
	f := table.NewFake()
	w := NewWriter(f, nil)
	if _, err := w.Apply(context.Background(), goldenState(), true); err != nil {
		t.Fatal(err)
	}
	return f, w
}

// TestGoldenPolicyFake: the Writer over the fake table and sets leaves
// exactly testdata/policy-filter.golden (read from the kernel, see
// TestGoldenPolicyKernel); the fake refuses a rule on a set not yet
// created and a set destroyed while a rule uses it, so this also checks
// that the sets are added before the rules that use them and removed
// after.
func TestGoldenPolicyFake(t *testing.T) {
	f, w := goldenFake(t)
	ctx := context.Background()
	testutil.Golden(t, "policy-filter.golden", f.Dump("filter"))
	for _, readBack := range []bool{false, true} {
		if s, err := w.Apply(ctx, goldenState(), readBack); err != nil || s.Restored || s.SetsCreated+s.SetsSwapped+s.SetsDeleted > 0 {
			t.Fatalf("converged apply (readBack=%v) wrote: %+v %v", readBack, s, err)
		}
	}
	if _, err := w.Apply(ctx, &rules.State{}, false); err != nil {
		t.Fatal(err)
	}
	sets, _ := f.IPSetSave(ctx)
	if d := f.Dump("filter"); strings.Contains(d, "WEFT-") || sets != "" {
		t.Fatalf("left after removing all policy:\n%s%s", d, sets)
	}
}

// TestDriftRepairedFake: a filter table drifted every way (the FORWARD
// jump deleted, a rule added to an owned chain, a stale owned chain with
// a jump from INPUT, another tool's rule above the INPUT jump) is back to
// the golden dump after one Apply with read-back, in one restore.
func TestDriftRepairedFake(t *testing.T) {
	f, w := goldenFake(t)
	ctx := context.Background()
	golden := f.Dump("filter")
	if !strings.Contains(golden, "\n-A FORWARD -m comment --comment \"weft:") {
		t.Fatalf("FORWARD's first rule is not the policy jump:\n%s", golden)
	}
	drift := "*filter\n-D FORWARD 1\n" +
		"-A " + rules.ChainCheck + " -s 10.9.9.9/32 -j ACCEPT\n" +
		":WEFT-POL-STALE - [0:0]\n-A WEFT-POL-STALE -j DROP\n-A INPUT -j WEFT-POL-STALE\n" +
		"-I INPUT 1 -m comment --comment host-firewall -j ACCEPT\nCOMMIT\n"
	if err := f.Restore(ctx, drift); err != nil {
		t.Fatal(err)
	}
	n := f.Restores
	s, err := w.Apply(ctx, goldenState(), true)
	if err != nil || f.Restores != n+1 || !s.JumpFixed || s.ChainsWritten != 1 || s.ChainsDeleted != 1 {
		t.Fatalf("repair: %+v %v (%d restores)", s, err, f.Restores-n)
	}
	// The other tool's rule stays, below the jump it had got above.
	want := strings.Replace(golden, "\n-A FORWARD", "\n-A INPUT -m comment --comment host-firewall -j ACCEPT\n-A FORWARD", 1)
	if got := f.Dump("filter"); got != want {
		t.Fatalf("after repair:\n%s\nwant:\n%s", got, want)
	}
}
