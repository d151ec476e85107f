// Package policybench measures the policy dataplane: a full sync of 1,000
// NetworkPolicies over 5,000 pods (100 on this node) against the floor of
// loading the same text with iptables-restore + ipset restore, and an
// incremental sync after one pod label change. Results: RESULTS.md.
package policybench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/policy/rules"
)

const (
	numNS       = 50
	podsPerNS   = 100
	polsPerNS   = 20
	localPerNS  = 2
	benchBridge = "weft0"
)

func podIP(n, i int) netip.Addr {
	k := n*podsPerNS + i
	return netip.AddrFrom4([4]byte{10, 244, byte(k / 250), byte(1 + k%250)})
}

// workload builds the cluster: 50 namespaces x 100 pods, 20 policies per
// namespace (ingress from pod and namespace+pod selectors on a numbered and
// a named port; every fourth also egress to an ipBlock with except), and
// 100 endpoints local to this node spread over the namespaces.
func workload() rules.Input {
	var in rules.Input
	for n := 0; n < numNS; n++ {
		ns := fmt.Sprintf("ns-%02d", n)
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"team": fmt.Sprintf("t%d", n%5), "kubernetes.io/metadata.name": ns}}})
		for i := 0; i < podsPerNS; i++ {
			http := int32(8080 + i%2)
			ip := podIP(n, i).String()
			name := fmt.Sprintf("pod-%03d", i)
			in.Pods = append(in.Pods, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name), ResourceVersion: "1",
					Labels: map[string]string{"app": fmt.Sprintf("a%d", i%10), "role": fmt.Sprintf("r%d", i%5)}},
				Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: http}}}}},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
			})
		}
		for l := 0; l < localPerNS; l++ {
			i := (n*7 + l*31) % podsPerNS
			name := fmt.Sprintf("pod-%03d", i)
			in.Endpoints = append(in.Endpoints, endpoint.Endpoint{PodNamespace: ns, PodName: name, PodUID: ns + "-" + name,
				HostVeth: fmt.Sprintf("wv%02d%03d", n, i), IfName: "eth0", IPs: []string{podIP(n, i).String() + "/16"}})
		}
		for k := 0; k < polsPerNS; k++ {
			tcp := corev1.ProtocolTCP
			udp := corev1.ProtocolUDP
			p8080 := intstr.FromInt32(8080)
			named := intstr.FromString("http")
			p53 := intstr.FromInt32(53)
			pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("pol-%02d", k),
				UID: types.UID(fmt.Sprintf("%s-pol-%02d", ns, k)), ResourceVersion: "1"},
				Spec: networkingv1.NetworkPolicySpec{
					PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", k%10)}},
					Ingress: []networkingv1.NetworkPolicyIngressRule{
						{From: []networkingv1.NetworkPolicyPeer{{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"role": fmt.Sprintf("r%d", k%5)}}}},
							Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &p8080}}},
						{From: []networkingv1.NetworkPolicyPeer{{
							NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"team": fmt.Sprintf("t%d", k%5)}},
							PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("a%d", (k+1)%10)}}}},
							Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &named}}},
					},
				}}
			if k%4 == 0 {
				pol.Spec.PolicyTypes = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
				pol.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
					To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{fmt.Sprintf("10.%d.0.0/16", k)}}}},
					Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &p53}}}}
			}
			in.Policies = append(in.Policies, pol)
		}
	}
	return in
}

func describe(st *rules.State) string {
	rules, members := 0, 0
	for _, c := range st.Chains {
		rules += len(c.Rules)
	}
	for _, s := range st.IPSets {
		members += len(s.Members)
	}
	return fmt.Sprintf("%d chains, %d rules, %d ipsets, %d members", len(st.Chains), rules, len(st.IPSets), members)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// floor loads the same rendered text with the bare tools into a fresh
// namespace: ipset restore, then iptables-restore --noflush.
func floor(b *testing.B, mode iptables.Mode, st *rules.State) time.Duration {
	b.Helper()
	n := testutil.NewNS(b)
	r := iptables.Runner{Mode: mode, NetNS: n.Path()}
	ctx := context.Background()
	t0 := time.Now()
	if err := r.IPSetRestore(ctx, st.IPSetRestoreText()); err != nil {
		b.Fatal(err)
	}
	if err := r.Restore(ctx, st.RestoreText()); err != nil {
		b.Fatal(err)
	}
	return time.Since(t0)
}

// BenchmarkFullSync: render + apply into an empty node namespace, against
// the floor, measured in the same run.
func BenchmarkFullSync(b *testing.B) {
	testutil.RequireRoot(b)
	in := workload()
	cfg := rules.Config{Bridge: benchBridge, AllowMark: 0x100000}
	ctx := context.Background()
	var render, apply, total, fl time.Duration
	var st *rules.State
	mode, err := iptables.Detect(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	for i := 0; i < b.N; i++ {
		n := testutil.NewNS(b)
		w, wmode, err := policy.NewNodeWriter(ctx, n.Path(), nil)
		if err != nil {
			b.Fatal(err)
		}
		mode = wmode
		b.Cleanup(func() { w.Close() })
		// As the controller's first sync: kernel read-back overlapped
		// with the render, then the apply.
		t0 := time.Now()
		w.Prefetch(ctx)
		st = rules.Render(cfg, in)
		t1 := time.Now()
		render += t1.Sub(t0)
		if len(st.Errors) > 0 {
			b.Fatal(st.Errors)
		}
		if _, err := w.Apply(ctx, st, true); err != nil {
			b.Fatal(err)
		}
		apply += time.Since(t1)
		total += time.Since(t0)
		fl += floor(b, mode, st)
	}
	N := float64(b.N)
	b.ReportMetric(ms(render)/N, "render-ms")
	b.ReportMetric(ms(apply)/N, "apply-ms")
	b.ReportMetric(ms(fl)/N, "floor-ms")
	b.ReportMetric(ms(total)/N, "total-ms")
	b.ReportMetric(ms(total)/ms(fl), "total/floor")
	b.Logf("backend %s; %d policies, %d pods, %d local endpoints -> %s", mode, len(in.Policies), len(in.Pods), len(in.Endpoints), describe(st))
}

// Samples per invocation, independent of b.N (make bench runs -benchtime 1x).
const (
	fullSyncSamples    = 5
	incrementalSamples = 21
)

// fullSync renders with a fresh caching Renderer and applies into a fresh
// node namespace, as the controller's first sync: the kernel read-back
// overlapped with the render, then the apply.
func fullSync(b *testing.B, cfg rules.Config, in rules.Input) (*rules.Renderer, *policy.Writer, time.Duration) {
	b.Helper()
	ctx := context.Background()
	n := testutil.NewNS(b)
	w, _, err := policy.NewNodeWriter(ctx, n.Path(), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { w.Close() })
	rr := rules.NewRenderer(cfg) // as the controller keeps it
	t0 := time.Now()
	w.Prefetch(ctx)
	if _, err := w.Apply(ctx, rr.Render(in), true); err != nil {
		b.Fatal(err)
	}
	return rr, w, time.Since(t0)
}

// BenchmarkIncrementalLabelChange: one pod changes a label that peer
// selectors use; render + apply of that change (median of 21 changes)
// against the full sync of the same state (median of 5 full syncs, each
// into a fresh namespace) in the same run.
func BenchmarkIncrementalLabelChange(b *testing.B) {
	testutil.RequireRoot(b)
	in := workload()
	cfg := rules.Config{Bridge: benchBridge, AllowMark: 0x100000}
	ctx := context.Background()
	mode, err := iptables.Detect(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	var fulls, incs, renders []float64
	var rr *rules.Renderer
	var w *policy.Writer
	for i := 0; i < fullSyncSamples; i++ {
		var d time.Duration
		rr, w, d = fullSync(b, cfg, in)
		fulls = append(fulls, ms(d))
	}
	idx := 3*podsPerNS + 17 // a remote pod, peer of several policies
	var stats policy.ApplyStats
	for i := 0; i < max(incrementalSamples, b.N); i++ {
		// The informer hands over a new object with a new resourceVersion.
		pod := in.Pods[idx].DeepCopy()
		pod.ResourceVersion = fmt.Sprint(i + 2)
		if i%2 == 0 {
			pod.Labels["role"] = "r0"
		} else {
			pod.Labels["role"] = "r2"
		}
		in.Pods[idx] = pod
		// Listers hand out objects in random order.
		rand.Shuffle(len(in.Pods), func(i, j int) { in.Pods[i], in.Pods[j] = in.Pods[j], in.Pods[i] })
		idx = slices.Index(in.Pods, pod)
		t1 := time.Now()
		st := rr.Render(in)
		renders = append(renders, ms(time.Since(t1)))
		stats, err = w.Apply(ctx, st, false)
		incs = append(incs, ms(time.Since(t1)))
		if err != nil {
			b.Fatal(err)
		}
		if stats.SetsSwapped == 0 || stats.Restored {
			b.Fatalf("a peer label change should swap sets only, got %+v", stats)
		}
	}
	b.ReportMetric(median(fulls), "full-ms")
	b.ReportMetric(median(incs), "incremental-ms")
	b.ReportMetric(median(renders), "incr-render-ms")
	b.ReportMetric(median(incs)/median(fulls), "incremental/full")
	b.Logf("backend %s; full syncs %v ms; incremental %v ms (render %v); last apply %+v", mode, fulls, incs, renders, stats)
}
