package policybench

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/testutil"
)

func localcluster(b *testing.B, ctx context.Context, args ...string) string {
	b.Helper()
	root := testutil.RepoRoot()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "localcluster"), args...)
	cmd.Dir = root
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		b.Fatalf("hack/localcluster %v: %v\n%s%s", args, err, out.String(), errb.String())
	}
	return strings.TrimSpace(out.String())
}

// BenchmarkDenyPolicyLatency: in the local cluster (3 nodes), the time from
// creating a deny-all-ingress policy for a server pod to the first probe
// from a client pod on another node that is denied; median of 20.
// Probes run back to back (each `hack/localcluster probe` with a 300 ms
// timeout), so the figure is an upper bound by one probe interval.
func BenchmarkDenyPolicyLatency(b *testing.B) {
	testutil.RequireRoot(b)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	localcluster(b, ctx, "down")
	b.Cleanup(func() { localcluster(b, context.Background(), "down") })
	localcluster(b, ctx, "up", "--nodes", "3")
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(testutil.RepoRoot(), ".localcluster", "kubeconfig"))
	if err != nil {
		b.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		b.Fatalf("nodes: %v", err)
	}
	ns := fmt.Sprintf("deny-latency-%d", time.Now().UnixNano()%100000)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	for i, name := range []string{"client", "server"} {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": name}},
			Spec: corev1.PodSpec{NodeName: nodes.Items[i].Name, Containers: []corev1.Container{{Name: "srv", Image: "weft.dev/echo:test",
				Ports: []corev1.ContainerPort{{ContainerPort: 80, Protocol: corev1.ProtocolTCP}}}}}}
		if _, err := client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	for deadline := time.Now().Add(3 * time.Minute); ; time.Sleep(500 * time.Millisecond) {
		list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
		running := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				running++
			}
		}
		if err == nil && running == 2 {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("pods not running: %v", err)
		}
	}
	probe := func() bool {
		return localcluster(b, ctx, "probe", "--from", ns+"/client", "--to", ns+"/server", "--port", "80", "--proto", "tcp", "--timeout", "300ms") == "allowed"
	}
	waitUntil := func(want bool) {
		deadline := time.Now().Add(3 * time.Minute)
		for probe() != want {
			if time.Now().After(deadline) {
				b.Fatalf("probe never became allowed=%v", want)
			}
		}
	}
	waitUntil(true)
	deny := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "deny"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}}}
	var lat []time.Duration
	for i := 0; i < b.N; i++ {
		for round := 0; round < 20; round++ {
			t0 := time.Now()
			if _, err := client.NetworkingV1().NetworkPolicies(ns).Create(ctx, deny, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
			for {
				start := time.Now()
				if !probe() {
					lat = append(lat, start.Sub(t0))
					break
				}
				if time.Since(t0) > time.Minute {
					b.Fatal("deny policy never took effect")
				}
			}
			if err := client.NetworkingV1().NetworkPolicies(ns).Delete(ctx, "deny", metav1.DeleteOptions{}); err != nil {
				b.Fatal(err)
			}
			waitUntil(true)
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "median-ms")
	b.ReportMetric(float64(lat[len(lat)*9/10].Milliseconds()), "p90-ms")
	b.Logf("apply -> first denied probe: %v", lat)
}
