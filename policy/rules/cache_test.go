package rules_test

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"

	. "github.com/weftnet/weft/policy/rules"
	"github.com/weftnet/weft/policy/rules/rulestest"
)

// The Renderer's caches (pod infos per object, selector results per
// namespace, namespace-selector peers, set members) must follow pods moving
// in and out of selectors, namespace label changes, finished pods and
// deletions: each step is checked against a fresh Render and against the
// expected verdict of a traced packet.
func TestRendererCacheFollowsSelectorChanges(t *testing.T) {
	c := rulestest.NewCluster()
	for _, p := range c.Pods {
		p.ResourceVersion = "1"
	}
	rv := 1
	update := func(r rulestest.Ref, change func(*corev1.Pod)) { // a new object, as informers hand over
		for i, p := range c.Pods {
			if p.Namespace == r.NS && p.Name == r.Pod {
				q := p.DeepCopy()
				change(q)
				rv++
				q.ResourceVersion = fmt.Sprint(rv)
				c.Pods[i] = q
				return
			}
		}
		t.Fatalf("no pod %s", r)
	}
	setNSLabel := func(ns, k, v string) {
		for i, n := range c.Namespaces {
			if n.Name == ns {
				m := n.DeepCopy()
				m.Labels[k] = v
				c.Namespaces[i] = m
			}
		}
	}
	fromGreen := rulestest.WithIngress(rulestest.NP("x", "from-green", nil, rulestest.TIn),
		rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("color", "green"), PodSelector: rulestest.LS("role", "client")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80))))
	fromLocal := rulestest.WithIngress(rulestest.NP("x", "from-local", nil, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("role", "client")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80))))
	pols := []*networkingv1.NetworkPolicy{fromGreen, fromLocal}
	for i, p := range pols {
		p.UID, p.ResourceVersion = types.UID(fmt.Sprintf("pol-%d", i)), "1"
	}
	rr := NewRenderer(DefaultConfig())
	dst := rulestest.Ref{NS: "x", Pod: "a"} // on node 1, the cached Renderer's node
	check := func(step string, src rulestest.Ref, want bool) {
		t.Helper()
		in := Input{Policies: pols, Pods: c.Pods, Namespaces: c.Namespaces, Endpoints: c.Endpoints(1)}
		got, fresh := rr.Render(in), Render(DefaultConfig(), in)
		if got.RestoreText() != fresh.RestoreText() || got.IPSetRestoreText() != fresh.IPSetRestoreText() {
			t.Fatalf("%s: cached render differs from a fresh one", step)
		}
		states := map[int]*State{1: got, 2: c.Render(2, pols...)}
		if ok, tr := rulestest.Allowed(states, rulestest.Flow{Src: src, Dst: dst, Proto: "tcp", Port: 80}); ok != want {
			t.Fatalf("%s: %s -> %s allowed=%v, want %v\n%s", step, src, dst, ok, want, tr)
		}
	}
	zb, xc := rulestest.Ref{NS: "z", Pod: "b"}, rulestest.Ref{NS: "x", Pod: "c"}
	check("start", zb, false)
	update(zb, func(p *corev1.Pod) { p.Labels["role"] = "client" })
	check("pod label matches, namespace does not", zb, false)
	setNSLabel("z", "color", "green")
	check("namespace label change moves it in", zb, true)
	update(zb, func(p *corev1.Pod) { p.Labels["role"] = "other" })
	check("pod label change moves it out", zb, false)
	update(zb, func(p *corev1.Pod) { p.Labels["role"] = "client" })
	check("and back in", zb, true)
	update(zb, func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded })
	check("finished pod is no peer", zb, false)
	update(zb, func(p *corev1.Pod) { p.Status.Phase = corev1.PodRunning })
	check("running again", zb, true)
	setNSLabel("z", "color", "blue")
	check("namespace label change moves it out", zb, false)
	check("same-namespace peer not labelled", xc, false)
	update(xc, func(p *corev1.Pod) { p.Labels["role"] = "client" })
	check("same-namespace pod label change moves it in", xc, true)

	// Deleting pods: once enough cached pods are unused, they are dropped.
	all := c.Pods
	var rest []*corev1.Pod
	for _, p := range c.Pods {
		if p.Namespace != "y" {
			rest = append(rest, p)
		}
	}
	c.Pods = rest
	check("pods of y deleted", xc, true)
	if rr.CachedPods() != len(c.Pods) {
		t.Fatalf("pod cache holds %d entries for %d pods", rr.CachedPods(), len(c.Pods))
	}
	c.Pods = all
	check("pods of y back", rulestest.Ref{NS: "y", Pod: "b"}, false)
	update(rulestest.Ref{NS: "y", Pod: "b"}, func(p *corev1.Pod) { p.Labels["role"] = "client" })
	setNSLabel("y", "color", "green")
	check("y/b moves in", rulestest.Ref{NS: "y", Pod: "b"}, true)
}
