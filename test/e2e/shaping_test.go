package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/nettopo"
)

const (
	annEgressBW  = "kubernetes.io/egress-bandwidth"
	annIngressBW = "kubernetes.io/ingress-bandwidth"
)

// checkPodBandwidth turns weftd's shaping on (a bandwidth section with
// podCeil 10M, so a class's ceil is its rate and the measured rate is the
// annotation's), starts a pod annotated 10M both ways next to server (ADD
// through libcni with the capability arguments the node emulator passes as
// containerd does), and checks: its classes are on its node; iperf3 from
// and to it measures 10 Mbit/s within -15%/+10% (an unshaped pod first, as
// a control that the bounds can fail); a live change to 20M shows in the
// kernel within 5 s and in the measured rate; a bad annotation gives a
// Warning Event InvalidBandwidth and keeps 20M. Removing the section again
// removes the trees. a and b are unshaped pods of pods on one node.
func checkPodBandwidth(t *testing.T, ctx context.Context, c kubernetes.Interface, ns string, pods []corev1.Pod, a, b string) {
	t.Helper()
	var client, server corev1.Pod
	for _, p := range pods {
		switch p.Name {
		case a:
			client = p
		case b:
			server = p
		}
	}
	plain := measureRate(t, client, server, false)
	if rateWithin(plain, 10) {
		t.Errorf("control: unshaped %s -> %s measured %.1f Mbit/s, inside the 10M bounds: the rate check could not fail", a, b, plain)
	}
	restore := enableShaping(t, ctx, c, `{"podCeil":"10M"}`)
	defer restore()
	node := server.Spec.NodeName
	waitConflistShapes(t, ctx, node, true)

	pod := startShapedPod(t, ctx, c, ns, node, "10M")
	for _, dev := range []string{"weft.ifb.out", "weft.ifb.in"} {
		if !nodeClassRate(t, ctx, node, dev, "10Mbit") {
			t.Errorf("no 10Mbit class on %s of %s:\n%s", dev, node, nodeTC(ctx, node, "class", dev))
		}
	}
	for _, reverse := range []bool{false, true} {
		if got := measureRate(t, pod, server, reverse); !rateWithin(got, 10) {
			t.Errorf("pod annotated 10M measured %.2f Mbit/s (%s)", got, direction(reverse))
		}
	}

	start := time.Now()
	annotate(t, ctx, c, ns, pod.Name, "20M")
	if err := waitFor(ctx, 5*time.Second, func() (bool, error) {
		return nodeClassRate(t, ctx, node, "weft.ifb.out", "20Mbit") && nodeClassRate(t, ctx, node, "weft.ifb.in", "20Mbit"),
			fmt.Errorf("no 20Mbit class in both trees of %s", node)
	}); err != nil {
		t.Errorf("live change to 20M: %v", err)
	}
	t.Logf("live change 10M -> 20M in the kernel after %v", time.Since(start).Round(time.Millisecond))
	if got := measureRate(t, pod, server, false); !rateWithin(got, 20) {
		t.Errorf("after the change to 20M: %.2f Mbit/s", got)
	}

	annotate(t, ctx, c, ns, pod.Name, "fast")
	waitBandwidthEvent(t, ctx, c, ns, pod.Name)
	if !nodeClassRate(t, ctx, node, "weft.ifb.out", "20Mbit") {
		t.Errorf("bad annotation: the 20Mbit class is gone:\n%s", nodeTC(ctx, node, "class", "weft.ifb.out"))
	}
	if got := measureRate(t, pod, server, false); !rateWithin(got, 20) {
		t.Errorf("after a bad annotation: %.2f Mbit/s, want the old 20M", got)
	}

	restore()
	waitConflistShapes(t, ctx, node, false)
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		return nodeTC(ctx, node, "qdisc", "weft.ifb.out") == "", fmt.Errorf("weft.ifb.out still on %s", node)
	}); err != nil {
		t.Errorf("shaping off: %v", err)
	}
}

// rateWithin: measured Mbit/s in [0.85, 1.10] × want (TCP through a
// bounded queue runs a little below the rate; a loaded machine lower).
func rateWithin(got, want float64) bool { return got >= 0.85*want && got <= 1.10*want }

func direction(reverse bool) string {
	if reverse {
		return "server -> pod, the pod's ingress"
	}
	return "pod -> server, the pod's egress"
}

// enableShaping sets the bandwidth section of net-conf.json; the returned
// func (also run at cleanup) puts the ConfigMap back.
func enableShaping(t *testing.T, ctx context.Context, c kubernetes.Interface, section string) func() {
	t.Helper()
	cms := c.CoreV1().ConfigMaps("kube-system")
	cm, err := cms.Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	orig := cm.Data["net-conf.json"]
	var conf map[string]json.RawMessage
	if err := json.Unmarshal([]byte(orig), &conf); err != nil {
		t.Fatalf("net-conf.json: %v", err)
	}
	conf["bandwidth"] = json.RawMessage(section)
	data, _ := json.Marshal(conf)
	cm.Data["net-conf.json"] = string(data)
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	done := false
	restore := func() {
		if done {
			return
		}
		done = true
		if cur, err := cms.Get(context.Background(), "weft", metav1.GetOptions{}); err == nil {
			cur.Data["net-conf.json"] = orig
			if _, err := cms.Update(context.Background(), cur, metav1.UpdateOptions{}); err != nil {
				t.Errorf("restore net-conf.json: %v", err)
			}
		}
	}
	t.Cleanup(restore)
	return restore
}

// waitConflistShapes waits until weftd on node has written a conflist
// that names the shaping socket (and so no reference bandwidth plugin).
func waitConflistShapes(t *testing.T, ctx context.Context, node string, want bool) {
	t.Helper()
	err := waitFor(ctx, time.Minute, func() (bool, error) {
		pid, err := weftdPID(node)
		if err != nil {
			return false, err
		}
		b, err := os.ReadFile(filepath.Join(fmt.Sprintf("/proc/%d/root", pid), "etc/cni/net.d/10-weft.conflist"))
		if err != nil {
			return false, err
		}
		s := string(b)
		shapes := strings.Contains(s, `"shapingSocket"`) && !strings.Contains(s, `"type": "bandwidth"`) && !strings.Contains(s, `"type":"bandwidth"`)
		return shapes == want, fmt.Errorf("conflist of %s: shaping %v, want %v", node, shapes, want)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// startShapedPod creates a pod annotated rate both ways on node and waits
// until it runs.
func startShapedPod(t *testing.T, ctx context.Context, c kubernetes.Interface, ns, node, rate string) corev1.Pod {
	t.Helper()
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "shaped", Annotations: map[string]string{annEgressBW: rate, annIngressBW: rate}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "web", Image: "weft.dev/echo:test"}}},
	}
	if _, err := c.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CoreV1().Pods(ns).Delete(context.Background(), p.Name, metav1.DeleteOptions{}) })
	var got *corev1.Pod
	if err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		var err error
		got, err = c.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.Phase == corev1.PodRunning && got.Status.PodIP != "", fmt.Errorf("pod %s: %s", p.Name, got.Status.Phase)
	}); err != nil {
		dumpEvents(t, ctx, c, ns)
		t.Fatal(err)
	}
	return *got
}

func annotate(t *testing.T, ctx context.Context, c kubernetes.Interface, ns, name, rate string) {
	t.Helper()
	patch := fmt.Sprintf(`{"metadata":{"annotations":{%q:%q,%q:%q}}}`, annEgressBW, rate, annIngressBW, rate)
	if _, err := c.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitBandwidthEvent(t *testing.T, ctx context.Context, c kubernetes.Interface, ns, pod string) {
	t.Helper()
	err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		evs, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == pod && e.Type == corev1.EventTypeWarning && e.Reason == "InvalidBandwidth" {
				if !strings.Contains(e.Message, annEgressBW) && !strings.Contains(e.Message, annIngressBW) {
					return false, fmt.Errorf("event does not name the annotation: %q", e.Message)
				}
				t.Logf("event on %s: %s", pod, e.Message)
				return true, nil
			}
		}
		return false, fmt.Errorf("no Warning InvalidBandwidth event on %s", pod)
	})
	if err != nil {
		dumpEvents(t, ctx, c, ns)
		t.Error(err)
	}
}

// nodeTC is `tc <what> show dev <dev>` in the node's netns ("" when the
// device is missing or has none).
func nodeTC(ctx context.Context, node, what, dev string) string {
	out, err := exec.CommandContext(ctx, "nsenter", "--net=/run/netns/"+node, "--", "tc", what, "show", "dev", dev).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// nodeClassRate reports whether dev on node has a pod class (1:2 and up)
// with that rate.
func nodeClassRate(t *testing.T, ctx context.Context, node, dev, rate string) bool {
	t.Helper()
	re := regexp.MustCompile(`class htb 1:([0-9a-f]+) parent 1:1 .*rate ` + regexp.QuoteMeta(rate) + ` `)
	return re.MatchString(nodeTC(ctx, node, "class", dev))
}

// measureRate runs iperf3 for 4 s between the two pods and returns the
// receiver's Mbit/s: client sends to server, or with reverse server sends
// to client.
func measureRate(t *testing.T, client, server corev1.Pod, reverse bool) float64 {
	t.Helper()
	from, to := openPodNS(t, client), openPodNS(t, server)
	if reverse {
		from, to = to, from
	}
	mbit := 1000 * nettopo.IPerf3(t, from.ns, to.ns, to.ip, 1, 4)
	t.Logf("iperf3 %s, %s: %.2f Mbit/s", client.Name, direction(reverse), mbit)
	return mbit
}
