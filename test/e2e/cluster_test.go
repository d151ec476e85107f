// Package e2e holds the end-to-end tests that run on the local cluster
// (hack/localcluster): a real kube-apiserver, controller-manager and
// scheduler, node namespaces on an underlay bridge, and the node emulator.
package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/testutil"
)

const (
	e2eNodes   = 3
	e2eReplica = 6
	tcpPort    = 8080
	udpPort    = 5353
)

// TestClusterPodsGetIPsFromNodeCIDRs brings the local cluster up, runs a
// Deployment through the real scheduler, checks every pod's IP against its
// node's podCIDR (assigned by the real controller-manager), probes between
// two pods on one node, and tears the cluster down, checking the host is
// exactly as before.
func TestClusterPodsGetIPsFromNodeCIDRs(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()

	before := snapshot(t)
	if !keep() {
		if _, err := localcluster(t, ctx, "down"); err != nil {
			t.Fatalf("pre-clean: %v", err)
		}
		before = snapshot(t)
		t.Cleanup(func() {
			if _, err := localcluster(t, context.Background(), "down"); err != nil {
				t.Errorf("down: %v", err)
			}
			assertHostRestored(t, before, snapshot(t))
		})
	}
	upArgs := []string{"up", "--nodes", fmt.Sprint(e2eNodes)}
	if mode := os.Getenv("WEFT_E2E_CNI"); mode != "" { // auto (default), static, manifest
		upArgs = append(upArgs, "--cni", mode)
	}
	upArgs = upArgsImage(t, upArgs)
	if _, err := localcluster(t, ctx, upArgs...); err != nil {
		t.Fatalf("up: %v", err)
	}
	client := adminClient(t)
	// The host check after down can see the cluster's processes.
	if procs := snapshot(t).Procs; len(procs) < 4+e2eNodes {
		t.Errorf("only %d cluster processes found while up: %v", len(procs), procs)
	}

	nodes := checkNodeCIDRs(t, ctx, client)
	checkNoWayOut(t, ctx)
	checkCredentials(t, ctx)
	checkManifest(t, ctx, client)
	if e2eImage(t) != "" {
		checkRunsFromImage(t, ctx, client)
	}

	ns := fmt.Sprintf("e2e-%06x", rand.IntN(1<<24))
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{})
	})
	if _, err := client.AppsV1().Deployments(ns).Create(ctx, deployment("web", e2eReplica), metav1.CreateOptions{}); err != nil {
		t.Fatalf("create deployment: %v", err)
	}

	var pods []corev1.Pod
	err := waitFor(ctx, 4*time.Minute, func() (bool, error) {
		list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
		if err != nil {
			return false, err
		}
		ready := 0
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" && p.DeletionTimestamp == nil {
				ready++
			}
		}
		pods = list.Items
		return ready == e2eReplica && len(list.Items) == e2eReplica, fmt.Errorf("%d of %d pods running with an IP", ready, e2eReplica)
	})
	if err != nil {
		for _, p := range pods {
			t.Logf("pod %s node=%q phase=%s ip=%q conditions=%v", p.Name, p.Spec.NodeName, p.Status.Phase, p.Status.PodIP, p.Status.Conditions)
		}
		dumpEvents(t, ctx, client, ns)
		t.Fatalf("pods: %v", err)
	}

	seen := map[string]string{}
	byNode := map[string][]string{}
	for _, p := range pods {
		cidr, ok := nodes[p.Spec.NodeName]
		if !ok {
			t.Errorf("pod %s on unknown node %q", p.Name, p.Spec.NodeName)
			continue
		}
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil {
			t.Errorf("pod %s IP %q: %v", p.Name, p.Status.PodIP, err)
			continue
		}
		if !cidr.Contains(ip) {
			t.Errorf("pod %s IP %s is not in node %s podCIDR %s", p.Name, ip, p.Spec.NodeName, cidr)
		}
		if ip == cidr.Masked().Addr().Next() {
			t.Errorf("pod %s got the gateway address %s", p.Name, ip)
		}
		if other, dup := seen[ip.String()]; dup {
			t.Errorf("pods %s and %s share IP %s", other, p.Name, ip)
		}
		seen[ip.String()] = p.Name
		byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], p.Name)
		checkScheduledByScheduler(t, ctx, client, &p)
		t.Logf("pod %s on %s: %s (node podCIDR %s)", p.Name, p.Spec.NodeName, ip, cidr)
	}

	// Two pods on one node answer each other, and the probe tells who answered.
	var a, b string
	for _, names := range byNode {
		if len(names) >= 2 {
			a, b = names[0], names[1]
			break
		}
	}
	if a == "" {
		t.Fatalf("no node holds two of the %d pods: %v", e2eReplica, byNode)
	}
	for _, proto := range []struct {
		name string
		port int
	}{{"tcp", tcpPort}, {"udp", udpPort}} {
		out, err := localcluster(t, ctx, "probe", "--from", ns+"/"+a, "--to", ns+"/"+b,
			"--port", fmt.Sprint(proto.port), "--proto", proto.name, "--timeout", "2s", "-v")
		if err != nil {
			t.Fatalf("probe %s: %v", proto.name, err)
		}
		if strings.TrimSpace(out) != "allowed" {
			t.Errorf("probe %s %s -> %s:%d = %q, want allowed", proto.name, a, b, proto.port, out)
		}
	}
	// A port nobody serves is not answered: the probe can say denied.
	out, err := localcluster(t, ctx, "probe", "--from", ns+"/"+a, "--to", ns+"/"+b, "--port", "9", "--proto", "tcp", "--timeout", "1s")
	if err != nil {
		t.Fatalf("probe unserved port: %v", err)
	}
	if strings.TrimSpace(out) != "denied" {
		t.Errorf("probe to unserved port = %q, want denied", out)
	}
	// exec runs in the pod's network namespace: its eth0 has the pod IP.
	out, err = localcluster(t, ctx, "exec", ns+"/"+a, "--", "ip", "-o", "-4", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatalf("exec: %v", err)
	}
	for _, p := range pods {
		if p.Name == a && !strings.Contains(out, " "+p.Status.PodIP+"/") {
			t.Errorf("exec in %s: eth0 shows %q, want pod IP %s", a, out, p.Status.PodIP)
		}
	}
	checkPodBandwidth(t, ctx, client, ns, pods, a, b)
}

// checkNoWayOut checks that no namespace of the cluster has a default
// route: nodes and the control plane reach only the underlay, so nothing in
// the cluster can send traffic off the machine.
func checkNoWayOut(t *testing.T, ctx context.Context) {
	t.Helper()
	names := []string{"wl-underlay", "wl-cp"}
	for i := 1; i <= e2eNodes; i++ {
		names = append(names, fmt.Sprintf("wl-node%d", i))
	}
	for _, n := range names {
		out, err := exec.CommandContext(ctx, "ip", "-n", n, "route", "show", "default").CombinedOutput()
		if err != nil {
			t.Errorf("routes of %s: %v: %s", n, err, out)
			continue
		}
		if strings.TrimSpace(string(out)) != "" {
			t.Errorf("namespace %s has a default route: %s", n, out)
		}
	}
}

// checkNodeCIDRs checks that every node got a distinct /24 from the
// cluster CIDR, written by kube-controller-manager (its node IPAM
// controller owns spec.podCIDR in the managed fields).
func checkNodeCIDRs(t *testing.T, ctx context.Context, client kubernetes.Interface) map[string]netip.Prefix {
	t.Helper()
	list, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatalf("list nodes: %v", err)
	}
	if len(list.Items) != e2eNodes {
		t.Fatalf("%d nodes, want %d", len(list.Items), e2eNodes)
	}
	cluster := netip.MustParsePrefix("10.244.0.0/16")
	out := map[string]netip.Prefix{}
	used := map[netip.Prefix]string{}
	for _, n := range list.Items {
		cidr, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			t.Errorf("node %s podCIDR %q: %v", n.Name, n.Spec.PodCIDR, err)
			continue
		}
		if cidr.Bits() != 24 || !cluster.Contains(cidr.Addr()) {
			t.Errorf("node %s podCIDR %s: want a /24 inside %s", n.Name, cidr, cluster)
		}
		if other, dup := used[cidr]; dup {
			t.Errorf("nodes %s and %s share podCIDR %s", other, n.Name, cidr)
		}
		used[cidr] = n.Name
		out[n.Name] = cidr
		byCM := false
		for _, mf := range n.ManagedFields {
			if mf.Manager == "kube-controller-manager" && mf.FieldsV1 != nil && strings.Contains(string(mf.FieldsV1.Raw), `"f:podCIDR"`) {
				byCM = true
			}
		}
		if !byCM {
			t.Errorf("node %s: spec.podCIDR not written by kube-controller-manager (managed fields: %v)", n.Name, managers(n.ManagedFields))
		}
	}
	return out
}

func managers(mfs []metav1.ManagedFieldsEntry) []string {
	var out []string
	for _, m := range mfs {
		out = append(out, m.Manager+"/"+string(m.Operation))
	}
	return out
}

// checkScheduledByScheduler checks the pod was bound by default-scheduler.
func checkScheduledByScheduler(t *testing.T, ctx context.Context, client kubernetes.Interface, p *corev1.Pod) {
	t.Helper()
	if p.Spec.NodeName == "" {
		t.Errorf("pod %s: no nodeName", p.Name)
		return
	}
	evs, err := client.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{
		FieldSelector: fields.Set{"involvedObject.name": p.Name, "reason": "Scheduled"}.String(),
	})
	if err != nil {
		t.Errorf("events of %s: %v", p.Name, err)
		return
	}
	for _, e := range evs.Items {
		if (e.ReportingController == "default-scheduler" || e.Source.Component == "default-scheduler") &&
			strings.Contains(e.Message, p.Spec.NodeName) {
			return
		}
	}
	t.Errorf("pod %s: no Scheduled event from default-scheduler naming %s (%d Scheduled events)", p.Name, p.Spec.NodeName, len(evs.Items))
}

func dumpEvents(t *testing.T, ctx context.Context, client kubernetes.Interface, ns string) {
	evs, err := client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	for _, e := range evs.Items {
		t.Logf("event %s %s: %s", e.InvolvedObject.Name, e.Reason, e.Message)
	}
}

func deployment(name string, replicas int32) *appsv1.Deployment {
	labels := map[string]string{"app": name}
	return &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					Containers: []corev1.Container{{
						Name:  "web",
						Image: "weft.dev/echo:test",
						Ports: []corev1.ContainerPort{
							{Name: "http", ContainerPort: tcpPort, Protocol: corev1.ProtocolTCP},
							{Name: "dns", ContainerPort: udpPort, Protocol: corev1.ProtocolUDP},
						},
					}},
				},
			},
		},
	}
}
