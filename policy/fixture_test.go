package policy

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftnet/weft/internal/endpoint"
)

// The test cluster: namespaces x, y, z with pods a, b, c each, over two
// nodes. Node 1 holds every "a" pod and x/b; node 2 holds the rest. Every
// pod names its ports serve-80-tcp etc.; "http" is TCP 80 on a and b but
// TCP 81 on c, so one named port means different numbers on different pods.
var (
	nsNames  = []string{"x", "y", "z"}
	podNames = []string{"a", "b", "c"}
)

type ref struct{ ns, pod string }

func (r ref) String() string { return r.ns + "/" + r.pod }

func allRefs() []ref {
	var out []ref
	for _, ns := range nsNames {
		for _, p := range podNames {
			out = append(out, ref{ns, p})
		}
	}
	return out
}

func nodeOf(r ref) int {
	if r.pod == "a" || r == (ref{"x", "b"}) {
		return 1
	}
	return 2
}

func ipOf(r ref) netip.Addr {
	ni := map[string]int{"x": 0, "y": 1, "z": 2}[r.ns]
	pi := map[string]int{"a": 0, "b": 1, "c": 2}[r.pod]
	return netip.AddrFrom4([4]byte{10, 244, byte(nodeOf(r)), byte(10 + ni*10 + pi)})
}

func vethOf(r ref) string { return "wv" + r.ns + r.pod }

type cluster struct {
	pods       []*corev1.Pod
	namespaces []*corev1.Namespace
}

func newCluster() *cluster {
	c := &cluster{}
	for _, ns := range nsNames {
		c.namespaces = append(c.namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}}})
	}
	for _, r := range allRefs() {
		http := int32(80)
		if r.pod == "c" {
			http = 81
		}
		ports := []corev1.ContainerPort{
			{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
			{Name: "serve-81-tcp", ContainerPort: 81, Protocol: corev1.ProtocolTCP},
			{Name: "serve-80-udp", ContainerPort: 80, Protocol: corev1.ProtocolUDP},
			{Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
			{Name: "http", ContainerPort: http},
		}
		ip := ipOf(r).String()
		c.pods = append(c.pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: r.ns, Name: r.pod, UID: types.UID("uid-" + r.ns + r.pod),
				Labels: map[string]string{"pod": r.pod}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node%d", nodeOf(r)),
				Containers: []corev1.Container{{Name: "srv", Ports: ports}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		})
	}
	return c
}

func (c *cluster) pod(r ref) *corev1.Pod {
	for _, p := range c.pods {
		if p.Namespace == r.ns && p.Name == r.pod {
			return p
		}
	}
	return nil
}

func (c *cluster) endpoints(node int) []endpoint.Endpoint {
	var eps []endpoint.Endpoint
	for _, r := range allRefs() {
		if nodeOf(r) != node {
			continue
		}
		eps = append(eps, endpoint.Endpoint{ContainerID: "ctr-" + r.ns + r.pod, IfName: "eth0", PodNamespace: r.ns,
			PodName: r.pod, PodUID: "uid-" + r.ns + r.pod, HostVeth: vethOf(r), IPs: []string{ipOf(r).String() + "/24"}})
	}
	return eps
}

func (c *cluster) render(node int, pols ...*networkingv1.NetworkPolicy) *State {
	return Render(DefaultConfig(), Input{Policies: pols, Pods: c.pods, Namespaces: c.namespaces, Endpoints: c.endpoints(node)})
}

// flow is one probe: src pod (or a bare address outside the cluster) to a
// pod, on proto/port.
type flow struct {
	src     ref
	srcAddr netip.Addr // when set, src is outside the cluster (via eth0)
	dst     ref
	proto   string
	port    uint16
	ct      string
	forge   netip.Addr // when set, src sends with this source address (a raw socket)
	notSYN  bool       // a TCP segment other than the opening SYN
}

// allowed traces the flow on each node it crosses: the source node
// (egress) and the destination node (ingress); on one node, one trace.
func allowed(states map[int]*State, f flow) (bool, string) {
	dn := nodeOf(f.dst)
	base := Packet{Dst: ipOf(f.dst), Proto: f.proto, DPort: f.port, CTState: f.ct, NotSYN: f.notSYN}
	if f.srcAddr.IsValid() {
		p := base
		p.Src, p.InIface, p.OutIface = f.srcAddr, "eth0", "weft0"
		t := states[dn].Trace("FORWARD", p)
		return t.Allowed(), t.String()
	}
	sn := nodeOf(f.src)
	base.Src = ipOf(f.src)
	if f.forge.IsValid() {
		base.Src = f.forge
	}
	if sn == dn {
		p := base
		p.InIface, p.OutIface, p.PhysIn, p.PhysOut, p.Bridged = "weft0", "weft0", vethOf(f.src), vethOf(f.dst), true
		t := states[sn].Trace("FORWARD", p)
		return t.Allowed(), t.String()
	}
	out := base
	out.InIface, out.OutIface, out.PhysIn = "weft0", "weft.vxlan", vethOf(f.src)
	t1 := states[sn].Trace("FORWARD", out)
	if !t1.Allowed() {
		return false, "source node: " + t1.String()
	}
	in := base
	in.InIface, in.OutIface = "weft.vxlan", "weft0"
	t2 := states[dn].Trace("FORWARD", in)
	return t2.Allowed(), "source node: " + t1.String() + "\ndestination node: " + t2.String()
}

// Policy builders.
func np(ns, name string, sel map[string]string, types []networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, PolicyTypes: types}}
}

var (
	tIn   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	tEg   = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	tBoth = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

func withIngress(p *networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyIngressRule) *networkingv1.NetworkPolicy {
	p.Spec.Ingress = append(p.Spec.Ingress, rules...)
	return p
}

func withEgress(p *networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	p.Spec.Egress = append(p.Spec.Egress, rules...)
	return p
}

func ls(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func expr(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

func pPort(proto corev1.Protocol, port intstr.IntOrString, end ...int32) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port}
	if len(end) > 0 {
		p.EndPort = &end[0]
	}
	return p
}

func num(n int) intstr.IntOrString      { return intstr.FromInt32(int32(n)) }
func named(s string) intstr.IntOrString { return intstr.FromString(s) }

// requireTruth checks every ordered pod pair (81) on each probe against want.
func requireTruth(t *testing.T, c *cluster, pols []*networkingv1.NetworkPolicy, probes []flow, want func(src, dst ref, f flow) bool) {
	t.Helper()
	states := map[int]*State{1: c.render(1, pols...), 2: c.render(2, pols...)}
	for n, st := range states {
		for _, err := range st.Errors {
			t.Errorf("node%d: unexpected render error: %v", n, err)
		}
	}
	bad := 0
	for _, pr := range probes {
		for _, s := range allRefs() {
			for _, d := range allRefs() {
				if s == d {
					continue
				}
				f := pr
				f.src, f.dst = s, d
				got, why := allowed(states, f)
				if exp := want(s, d, f); got != exp {
					bad++
					if bad <= 5 {
						t.Errorf("%s -> %s %s/%d: allowed=%v, want %v\n%s", s, d, f.proto, f.port, got, exp, why)
					}
				}
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d mismatches in all", bad)
	}
}
