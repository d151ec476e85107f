package policy

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/weftnet/weft/internal/iptables"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// longName is a valid DNS subdomain of n characters (labels of at most 63).
func longName(n int, fill string) string {
	var b strings.Builder
	for b.Len() < n {
		if b.Len() > 0 && b.Len()%64 == 63 {
			b.WriteByte('.')
			continue
		}
		b.WriteString(fill)
	}
	return b.String()[:n]
}

// TestKernelLongNames: with the longest names the API accepts (a 63-char
// namespace, 253-char pod and policy names), every rule the kernel holds
// has exactly the comment that was rendered (none cut by the kernel), a
// read-back resync finds nothing to restore, and the rules still enforce.
func TestKernelLongNames(t *testing.T) { onBothBackends(t, testKernelLongNames) }

func testKernelLongNames(t *testing.T, tn *testNode, w *Writer, run iptables.Runner) {
	ns := longName(63, "n")
	for i, p := range tn.k8sPods {
		p.Namespace, p.Name = ns, longName(252, "p")+p.Labels["pod"]
		tn.eps[i].PodNamespace, tn.eps[i].PodName = ns, p.Name
	}
	tn.namespaces[0].Name = ns
	onlyA := rulestest.WithIngress(rulestest.NP(ns, longName(253, "i"), map[string]string{"pod": "b"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "a")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http"))))
	denyOut := rulestest.NP(ns, longName(253, "e"), map[string]string{"pod": "c"}, rulestest.TEg)
	broken := rulestest.WithIngress(rulestest.NP(ns, longName(253, "x"), map[string]string{"pod": "a"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: rulestest.Expr("pod", "Bogus")}}))
	for _, pols := range [][]*networkingv1.NetworkPolicy{{onlyA, denyOut}, {onlyA, denyOut, broken}} {
		st := tn.render(pols...)
		if (len(pols) == 3) != (len(st.Errors) > 0) {
			t.Fatalf("render errors %v with %d policies", st.Errors, len(pols))
		}
		apply(t, w, st, false)
		long := 0
		for _, c := range st.Chains {
			for _, r := range c.Rules {
				if len("weft:"+r.Hash()+" "+r.Comment) > iptables.MaxComment {
					long++
				}
			}
		}
		if long == 0 {
			t.Fatal("no rendered comment is longer than the kernel keeps: the test tests nothing")
		}
		save, err := run.Save(context.Background(), "filter")
		if err != nil {
			t.Fatal(err)
		}
		d, err := iptables.ParseSave(save, "filter")
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range st.Chains {
			kc := d.Chains[c.Name]
			if kc == nil || len(kc.Rules) != len(c.Rules) {
				t.Errorf("%s: kernel has %v, rendered %d rules", c.Name, kc, len(c.Rules))
				continue
			}
			for i, r := range c.Rules {
				if got, want := iptables.Comment(kc.Rules[i]), iptables.Comment(r.Args()); got != want {
					t.Errorf("%s[%d]: kernel comment\n  %q\nwritten\n  %q", c.Name, i, got, want)
				}
			}
		}
		if s := apply(t, w, st, true); s.Restored || s.JumpFixed || s.SetsSwapped+s.SetsCreated+s.SetsDeleted > 0 {
			t.Errorf("resync after apply wrote: %+v", s)
		}
	}
	apply(t, w, tn.render(onlyA, denyOut), false)
	tn.check(t, "long names", []expect{{"a", "b", "tcp", 80, true}, {"c", "b", "tcp", 80, false}, {"b", "a", "tcp", 80, true}})
}

// TestCommentsFitTheKernel: rootless, every comment a render with the
// longest policy names writes fits what the kernel keeps.
func TestCommentsFitTheKernel(t *testing.T) {
	c := rulestest.NewCluster()
	name := longName(253, "q")
	st := c.Render(1, rulestest.WithIngress(rulestest.NP("x", name, nil, rulestest.TIn), rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "b")}})),
		rulestest.NP("x", longName(253, "r"), nil, rulestest.TEg))
	bounded := 0
	for _, ch := range st.Chains {
		for _, r := range ch.Rules {
			cm := iptables.Comment(r.Args())
			if len(cm) > iptables.MaxComment || !strings.HasPrefix(cm, "weft:"+r.Hash()+" ") {
				t.Errorf("%s: comment of %d bytes: %q", ch.Name, len(cm), cm)
			}
			if cm != "weft:"+r.Hash()+" "+r.Comment {
				bounded++
			}
		}
	}
	if bounded == 0 {
		t.Error("no comment needed bounding: the test tests nothing")
	}
}
