package e2e

import (
	"context"
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
)

// joiner is the node outside the streams' pair, taken out of the cluster
// before a switch and added back while that switch's migration runs.
type joiner struct {
	name   string
	labels map[string]string
	pair   pair
	cont   func() // resumes the paused weftd (idempotent)
}

// outsider is the node that holds neither end of p.
func outsider(nodes []*corev1.Node, p pair) *corev1.Node {
	var out *corev1.Node
	for _, n := range nodes {
		if n.Name != p.from.Spec.NodeName && n.Name != p.to.Spec.NodeName {
			out = n
		}
	}
	return out
}

// removeForJoin deletes the outsider's Node and force-deletes every pod
// bound to it (weftd's DaemonSet pod among them: weftd exits, as on a
// node that never ran it), and waits until weftd is gone there and the
// others no longer see it. Cleanup adds the Node back if the test ends
// before it did.
func removeForJoin(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node, p pair) *joiner {
	t.Helper()
	n := outsider(nodes, p)
	j := &joiner{name: n.Name, labels: n.Labels, pair: p, cont: func() {}}
	t.Cleanup(func() {
		j.cont()
		_, _ = c.CoreV1().Nodes().Create(context.Background(), j.node(), metav1.CreateOptions{})
	})
	if err := c.CoreV1().Nodes().Delete(ctx, j.name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	pods, err := c.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", j.name).String()})
	if err != nil {
		t.Fatal(err)
	}
	zero := int64(0)
	for _, pod := range pods.Items {
		if err := c.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil && !apierrors.IsNotFound(err) {
			t.Fatal(err)
		}
	}
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		if pid, err := weftdPID(j.name); err == nil {
			return false, fmt.Errorf("weftd (pid %d) still runs on %s", pid, j.name)
		}
		return len(weftNodes(t, ctx, c)) == len(nodes)-1, fmt.Errorf("node %s still listed", j.name)
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("removed node %s (its Node, its %d pods, its weftd)", j.name, len(pods.Items))
	return j
}

func (j *joiner) node() *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: j.name, Labels: j.labels}}
}

// holdMigration pauses (SIGSTOP) weftd on the pair's receiving node
// before the switch: it announces its old backend only, so no node can
// finish the migration (each waits for it to accept, then to send, the
// new identity). The old backend must not be udp (a userspace relay in
// weftd): on bgp Never the pair's packets stay on the kernel's routes.
func (j *joiner) holdMigration(t *testing.T) {
	t.Helper()
	held := j.pair.to.Spec.NodeName
	pid, err := weftdPID(held)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	j.cont = sync.OnceFunc(func() { _ = syscall.Kill(pid, syscall.SIGCONT) })
	t.Logf("paused weftd (pid %d) on %s before the switch", pid, held)
}

// joinMidway adds the node back in the middle of the switch to st (held
// open by holdMigration): once the running member of the pair receives
// st (phase 1) the Node is created, weftd starts there (the ConfigMap
// already names st) and publishes; then the paused weftd resumes. It
// fails unless the running member was still migrating when the new node
// published.
func (j *joiner) joinMidway(t *testing.T, ctx context.Context, c kubernetes.Interface, st switchStep) {
	t.Helper()
	defer j.cont()
	running := j.pair.from.Spec.NodeName
	waitReceiving(t, ctx, c, running, st)
	start := time.Now()
	if _, err := c.CoreV1().Nodes().Create(ctx, j.node(), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var joined *corev1.Node
	if err := waitFor(ctx, 45*time.Second, func() (bool, error) {
		n, err := c.CoreV1().Nodes().Get(ctx, j.name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		joined = n
		return n.Annotations[annoDecaps] != "", fmt.Errorf("%s: weftd has not published yet", j.name)
	}); err != nil {
		t.Fatalf("node added during the switch to %s: %v", st.id, err)
	}
	r, err := c.CoreV1().Nodes().Get(ctx, running, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node %s published %s after the Node was created: backend %q, decapsulates %q; meanwhile %s is in migration phase %q (backend %q, decapsulates %q)",
		j.name, time.Since(start).Round(time.Millisecond), joined.Annotations[annoBackend], joined.Annotations[annoDecaps],
		running, r.Annotations[annoMigration], r.Annotations[annoBackend], r.Annotations[annoDecaps])
	if r.Annotations[annoMigration] == "" {
		t.Errorf("%s finished the migration to %s before %s joined: the join was not mid-way", running, st.id, j.name)
	}
}

// checkJoined runs a pod on the added node (which waitSwitched found on
// st with only st's devices and routes) and probes it both ways, TCP and
// UDP, with the pods on the two others; full-size datagrams cross both
// ways with one of them.
func (j *joiner) checkJoined(t *testing.T, ctx context.Context, c kubernetes.Interface, mtu int, st switchStep) {
	t.Helper()
	nsName := j.pair.from.Namespace
	pods := c.CoreV1().Pods(nsName)
	if _, err := pods.Create(ctx, echoPod("joined", j.name), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pod *corev1.Pod
	if err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		p, err := pods.Get(ctx, "joined", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pod = p
		return p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "", fmt.Errorf("pod on %s: %s", j.name, p.Status.Phase)
	}); err != nil {
		dumpEvents(t, ctx, c, nsName)
		t.Fatal(err)
	}
	var pairs []pair
	for _, o := range []corev1.Pod{j.pair.from, j.pair.to} {
		pairs = append(pairs, pair{*pod, o}, pair{o, *pod})
	}
	probeAll(t, ctx, pairs)
	a, b := openPodNS(t, *pod), openPodNS(t, j.pair.from)
	for _, dir := range [][2]podNS{{a, b}, {b, a}} {
		if err := fullSizeUDP(dir[0], dir[1], mtu-28, 5405); err != nil {
			t.Errorf("added node on %s: %d-byte datagram with DF %s -> %s: %v", st.id, mtu-28, dir[0].pod.Name, dir[1].pod.Name, err)
		}
	}
	t.Logf("added node %s on %s: pod %s (%s) reached and was reached by %s and %s over TCP and UDP, full-size both ways with %s",
		j.name, st.id, pod.Name, pod.Status.PodIP, j.pair.from.Name, j.pair.to.Name, j.pair.from.Name)
}
