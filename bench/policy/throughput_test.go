package policybench

import (
	"context"
	"fmt"
	"os/exec"
	"sort"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/policy/rules"
)

const (
	iperfSeconds = 3
	// Interleaved rounds per invocation, independent of b.N (make bench
	// runs -benchtime 1x); the medians are reported.
	throughputRounds = 11
)

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// BenchmarkThroughputWithPolicies: same-node pod-to-pod TCP throughput
// across the bridge (br_netfilter on) with the 1,000-policy workload
// installed, the two pods among the local endpoints and the client allowed
// to the server by a policy, against the same path with no policy rules.
// Rounds (11, medians reported) are interleaved so machine load hits
// both alike.
func BenchmarkThroughputWithPolicies(b *testing.B) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 missing: run make deps")
	}
	u := nettopo.NewUnderlay(b)
	node := u.AddNode(b, 1)
	cli, srv := node.AddPod(b, 1500), node.AddPod(b, 1500)
	if err := nettopo.Sysctl(node.NS, "/proc/sys/net/bridge/bridge-nf-call-iptables", "1"); err != nil {
		b.Fatal(err)
	}
	in := workload()
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(5201)
	in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "perf"}})
	for i, p := range []*nettopo.Pod{cli, srv} {
		name := []string{"client", "server"}[i]
		ip := p.IP.String()
		in.Pods = append(in.Pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "perf", Name: name, UID: types.UID("perf-" + name), Labels: map[string]string{"role": name}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}})
		in.Endpoints = append(in.Endpoints, endpoint.Endpoint{PodNamespace: "perf", PodName: name,
			HostVeth: fmt.Sprintf("vpod%d", i+1), IPs: []string{ip + "/24"}})
	}
	in.Policies = append(in.Policies, &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "perf", Name: "server"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"role": "server"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": "client"}}}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}}}})
	st := rules.Render(rules.Config{Bridge: "weft0", AllowMark: 0x100000}, in)
	ctx := context.Background()
	mode, err := iptables.Detect(ctx, node.NS.Path())
	if err != nil {
		b.Fatal(err)
	}
	w := policy.NewWriter(iptables.Runner{Mode: mode, NetNS: node.NS.Path()}, nil)
	var none, with []float64
	for round := 0; round < max(throughputRounds, b.N); round++ {
		if _, err := w.Apply(ctx, &rules.State{}, true); err != nil {
			b.Fatal(err)
		}
		none = append(none, nettopo.IPerf3(b, cli.NS, srv.NS, srv.IP, 1, iperfSeconds))
		if _, err := w.Apply(ctx, st, true); err != nil {
			b.Fatal(err)
		}
		with = append(with, nettopo.IPerf3(b, cli.NS, srv.NS, srv.IP, 1, iperfSeconds))
	}
	_, _ = w.Apply(ctx, &rules.State{}, true)
	b.ReportMetric(median(none), "none-Gbit/s")
	b.ReportMetric(median(with), "policies-Gbit/s")
	b.ReportMetric(median(with)/median(none), "ratio")
	b.Logf("none %v, with 1,000 policies %v Gbit/s (%s)", none, with, mode)
}
