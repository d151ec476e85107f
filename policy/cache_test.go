package policy

import (
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
)

// The Renderer's caches (pod infos per object, selector results per
// namespace, namespace-selector peers, set members) must follow pods moving
// in and out of selectors, namespace label changes, finished pods and
// deletions: each step is checked against a fresh Render and against the
// expected verdict of a traced packet.
func TestRendererCacheFollowsSelectorChanges(t *testing.T) {
	c := newCluster()
	for _, p := range c.pods {
		p.ResourceVersion = "1"
	}
	rv := 1
	update := func(r ref, change func(*corev1.Pod)) { // a new object, as informers hand over
		for i, p := range c.pods {
			if p.Namespace == r.ns && p.Name == r.pod {
				q := p.DeepCopy()
				change(q)
				rv++
				q.ResourceVersion = fmt.Sprint(rv)
				c.pods[i] = q
				return
			}
		}
		t.Fatalf("no pod %s", r)
	}
	setNSLabel := func(ns, k, v string) {
		for i, n := range c.namespaces {
			if n.Name == ns {
				m := n.DeepCopy()
				m.Labels[k] = v
				c.namespaces[i] = m
			}
		}
	}
	fromGreen := withIngress(np("x", "from-green", nil, tIn),
		in([]from{{NamespaceSelector: ls("color", "green"), PodSelector: ls("role", "client")}}, pPort(corev1.ProtocolTCP, num(80))))
	fromLocal := withIngress(np("x", "from-local", nil, tIn),
		in([]from{{PodSelector: ls("role", "client")}}, pPort(corev1.ProtocolTCP, num(80))))
	pols := []*networkingv1.NetworkPolicy{fromGreen, fromLocal}
	for i, p := range pols {
		p.UID, p.ResourceVersion = types.UID(fmt.Sprintf("pol-%d", i)), "1"
	}
	rr := NewRenderer(DefaultConfig())
	dst := ref{"x", "a"} // on node 1, the cached Renderer's node
	check := func(step string, src ref, want bool) {
		t.Helper()
		in := Input{Policies: pols, Pods: c.pods, Namespaces: c.namespaces, Endpoints: c.endpoints(1)}
		got, fresh := rr.Render(in), Render(DefaultConfig(), in)
		if got.RestoreText() != fresh.RestoreText() || got.IPSetRestoreText() != fresh.IPSetRestoreText() {
			t.Fatalf("%s: cached render differs from a fresh one", step)
		}
		states := map[int]*State{1: got, 2: c.render(2, pols...)}
		if ok, tr := allowed(states, flow{src: src, dst: dst, proto: "tcp", port: 80}); ok != want {
			t.Fatalf("%s: %s -> %s allowed=%v, want %v\n%s", step, src, dst, ok, want, tr)
		}
	}
	zb, xc := ref{"z", "b"}, ref{"x", "c"}
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
	all := c.pods
	var rest []*corev1.Pod
	for _, p := range c.pods {
		if p.Namespace != "y" {
			rest = append(rest, p)
		}
	}
	c.pods = rest
	check("pods of y deleted", xc, true)
	if len(rr.pods) != len(c.pods) {
		t.Fatalf("pod cache holds %d entries for %d pods", len(rr.pods), len(c.pods))
	}
	c.pods = all
	check("pods of y back", ref{"y", "b"}, false)
	update(ref{"y", "b"}, func(p *corev1.Pod) { p.Labels["role"] = "client" })
	setNSLabel("y", "color", "green")
	check("y/b moves in", ref{"y", "b"}, true)
}
