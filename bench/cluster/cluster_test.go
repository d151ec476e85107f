// Package cluster benchmarks the local cluster (hack/localcluster): how long
// a warm `up` of 3 nodes takes, pod create -> Running-with-IP latency, and
// pod -> ClusterIP -> pod against pod -> pod across nodes, and the live
// backend switch (every ordered pair: time to the last node sending the
// new encapsulation, datagrams lost).
package cluster

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/testutil"
)

func localcluster(b *testing.B, args ...string) {
	b.Helper()
	root := testutil.RepoRoot()
	cmd := exec.Command(filepath.Join(root, "hack", "localcluster"), args...)
	cmd.Dir = root
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		b.Fatalf("hack/localcluster %v: %v\n%s", args, err, out.String())
	}
}

// adminClient returns a client with the cluster's admin kubeconfig.
func adminClient(b *testing.B) kubernetes.Interface {
	b.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(testutil.RepoRoot(), ".localcluster", "kubeconfig"))
	if err != nil {
		b.Fatal(err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return client
}

// BenchmarkClusterUpWarm: `hack/localcluster up --nodes 3` with every
// binary already built, from nothing to 3 Ready nodes with pod CIDRs.
func BenchmarkClusterUpWarm(b *testing.B) {
	testutil.RequireRoot(b)
	localcluster(b, "build")
	localcluster(b, "down")
	b.Cleanup(func() { localcluster(b, "down") })
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		localcluster(b, "up", "--nodes", "3")
		total += time.Since(start)
		b.StopTimer()
		localcluster(b, "down")
		b.StartTimer()
	}
	b.ReportMetric(total.Seconds()/float64(b.N), "s/up")
}

// BenchmarkPodStartLatency: pods created one after another (each waits for
// the previous one), create call -> Running with an IP, over 32 pods.
func BenchmarkPodStartLatency(b *testing.B) {
	testutil.RequireRoot(b)
	localcluster(b, "up", "--nodes", "3")
	b.Cleanup(func() { localcluster(b, "down") })
	client := adminClient(b)
	ctx := context.Background()
	ns := fmt.Sprintf("bench-%06x", rand.IntN(1<<24))
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	// The namespace's default ServiceAccount must exist before pods are admitted.
	for start := time.Now(); ; time.Sleep(100 * time.Millisecond) {
		if _, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			break
		}
		if time.Since(start) > time.Minute {
			b.Fatal("no default ServiceAccount")
		}
	}
	const pods = 32
	var lat []time.Duration
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		for i := 0; i < pods; i++ {
			d, err := podStart(ctx, client, ns, fmt.Sprintf("p%d-%d", it, i))
			if err != nil {
				b.Fatal(err)
			}
			lat = append(lat, d)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "ms-median")
	b.ReportMetric(float64(lat[(len(lat)*95+99)/100-1].Milliseconds()), "ms-p95")
	b.ReportMetric(float64(len(lat)), "pods")
}

func podStart(ctx context.Context, client kubernetes.Interface, ns, name string) (time.Duration, error) {
	w, err := client.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		return 0, err
	}
	defer w.Stop()
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "weft.dev/echo:test",
			Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}}},
	}
	start := time.Now()
	if _, err := client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return 0, err
	}
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				return 0, fmt.Errorf("watch of %s closed", name)
			}
			if ev.Type == watch.Error {
				return 0, fmt.Errorf("watch of %s: error event", name)
			}
			if p, ok := ev.Object.(*corev1.Pod); ok && p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				return time.Since(start), nil
			}
		case <-timeout:
			return 0, fmt.Errorf("pod %s not running with an IP after 2m", name)
		}
	}
}
