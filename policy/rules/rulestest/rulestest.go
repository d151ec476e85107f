// Package rulestest is the test cluster the policy tests share: namespaces
// x, y, z with pods a, b, c each over two nodes, builders for
// NetworkPolicies, and probes traced through the rendered rules of the
// nodes they cross. It is for tests only; product code never imports it.
package rulestest

import (
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/weftnet/weft/internal/endpoint/record"
	"github.com/weftnet/weft/policy/rules"
)

// The test cluster: namespaces x, y, z with pods a, b, c each, over two
// nodes. Node 1 holds every "a" pod and x/b; node 2 holds the rest. Every
// pod names its ports serve-80-tcp etc.; "http" is TCP 80 on a and b but
// TCP 81 on c, so one named port means different numbers on different pods.
var (
	nsNames  = []string{"x", "y", "z"}
	podNames = []string{"a", "b", "c"}
)

// Ref names one pod of the test cluster.
type Ref struct{ NS, Pod string }

func (r Ref) String() string { return r.NS + "/" + r.Pod }

// AllRefs is every pod of the cluster, namespace by namespace.
func AllRefs() []Ref {
	var out []Ref
	for _, ns := range nsNames {
		for _, p := range podNames {
			out = append(out, Ref{ns, p})
		}
	}
	return out
}

// NodeOf is the node (1 or 2) that runs r.
func NodeOf(r Ref) int {
	if r.Pod == "a" || r == (Ref{"x", "b"}) {
		return 1
	}
	return 2
}

// IPOf is r's pod address.
func IPOf(r Ref) netip.Addr {
	ni := map[string]int{"x": 0, "y": 1, "z": 2}[r.NS]
	pi := map[string]int{"a": 0, "b": 1, "c": 2}[r.Pod]
	return netip.AddrFrom4([4]byte{10, 244, byte(NodeOf(r)), byte(10 + ni*10 + pi)})
}

// VethOf is r's host veth.
func VethOf(r Ref) string { return "wv" + r.NS + r.Pod }

// Cluster is the test cluster's Pods and Namespaces.
type Cluster struct {
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
}

// NewCluster returns the cluster described above.
func NewCluster() *Cluster {
	c := &Cluster{}
	for _, ns := range nsNames {
		c.Namespaces = append(c.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns,
			Labels: map[string]string{"ns": ns, "kubernetes.io/metadata.name": ns}}})
	}
	for _, r := range AllRefs() {
		http := int32(80)
		if r.Pod == "c" {
			http = 81
		}
		ports := []corev1.ContainerPort{
			{Name: "serve-80-tcp", ContainerPort: 80, Protocol: corev1.ProtocolTCP},
			{Name: "serve-81-tcp", ContainerPort: 81, Protocol: corev1.ProtocolTCP},
			{Name: "serve-80-udp", ContainerPort: 80, Protocol: corev1.ProtocolUDP},
			{Name: "serve-81-udp", ContainerPort: 81, Protocol: corev1.ProtocolUDP},
			{Name: "http", ContainerPort: http},
		}
		ip := IPOf(r).String()
		c.Pods = append(c.Pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: r.NS, Name: r.Pod, UID: types.UID("uid-" + r.NS + r.Pod),
				Labels: map[string]string{"pod": r.Pod}},
			Spec: corev1.PodSpec{NodeName: fmt.Sprintf("node%d", NodeOf(r)),
				Containers: []corev1.Container{{Name: "srv", Ports: ports}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		})
	}
	return c
}

// Pod is r's Pod object.
func (c *Cluster) Pod(r Ref) *corev1.Pod {
	for _, p := range c.Pods {
		if p.Namespace == r.NS && p.Name == r.Pod {
			return p
		}
	}
	return nil
}

// Endpoints is node's endpoint records.
func (c *Cluster) Endpoints(node int) []record.Endpoint {
	var eps []record.Endpoint
	for _, r := range AllRefs() {
		if NodeOf(r) != node {
			continue
		}
		eps = append(eps, record.Endpoint{ContainerID: "ctr-" + r.NS + r.Pod, IfName: "eth0", PodNamespace: r.NS,
			PodName: r.Pod, PodUID: "uid-" + r.NS + r.Pod, HostVeth: VethOf(r), IPs: []string{IPOf(r).String() + "/24"}})
	}
	return eps
}

// Render is node's rendered rules under pols.
func (c *Cluster) Render(node int, pols ...*networkingv1.NetworkPolicy) *rules.State {
	return rules.Render(rules.DefaultConfig(), rules.Input{Policies: pols, Pods: c.Pods, Namespaces: c.Namespaces, Endpoints: c.Endpoints(node)})
}

// Flow is one probe: src pod (or a bare address outside the cluster) to a
// pod, on proto/port.
type Flow struct {
	Src     Ref
	SrcAddr netip.Addr // when set, src is outside the cluster (via eth0)
	Dst     Ref
	Proto   string
	Port    uint16
	CT      string
	Forge   netip.Addr // when set, src sends with this source address (a raw socket)
	NotSYN  bool       // a TCP segment other than the opening SYN
}

// Allowed traces the Flow on each node it crosses: the source node
// (egress) and the destination node (ingress); on one node, one trace.
func Allowed(states map[int]*rules.State, f Flow) (bool, string) {
	dn := NodeOf(f.Dst)
	base := rules.Packet{Dst: IPOf(f.Dst), Proto: f.Proto, DPort: f.Port, CTState: f.CT, NotSYN: f.NotSYN}
	if f.SrcAddr.IsValid() {
		p := base
		p.Src, p.InIface, p.OutIface = f.SrcAddr, "eth0", "weft0"
		t := states[dn].Trace("FORWARD", p)
		return t.Allowed(), t.String()
	}
	sn := NodeOf(f.Src)
	base.Src = IPOf(f.Src)
	if f.Forge.IsValid() {
		base.Src = f.Forge
	}
	if sn == dn {
		p := base
		p.InIface, p.OutIface, p.PhysIn, p.PhysOut, p.Bridged = "weft0", "weft0", VethOf(f.Src), VethOf(f.Dst), true
		t := states[sn].Trace("FORWARD", p)
		return t.Allowed(), t.String()
	}
	out := base
	out.InIface, out.OutIface, out.PhysIn = "weft0", "weft.vxlan", VethOf(f.Src)
	t1 := states[sn].Trace("FORWARD", out)
	if !t1.Allowed() {
		return false, "source node: " + t1.String()
	}
	in := base
	in.InIface, in.OutIface = "weft.vxlan", "weft0"
	t2 := states[dn].Trace("FORWARD", in)
	return t2.Allowed(), "source node: " + t1.String() + "\ndestination node: " + t2.String()
}

// NP is a policy in ns selecting the pods with labels sel (nil: all).
func NP(ns, name string, sel map[string]string, types []networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, PolicyTypes: types}}
}

// The policy types.
var (
	TIn   = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	TEg   = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
	TBoth = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}
)

// WithIngress appends ingress rules to p.
func WithIngress(p *networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyIngressRule) *networkingv1.NetworkPolicy {
	p.Spec.Ingress = append(p.Spec.Ingress, rules...)
	return p
}

// WithEgress appends egress rules to p.
func WithEgress(p *networkingv1.NetworkPolicy, rules ...networkingv1.NetworkPolicyEgressRule) *networkingv1.NetworkPolicy {
	p.Spec.Egress = append(p.Spec.Egress, rules...)
	return p
}

// LS is a label selector matching the key/value pairs kv.
func LS(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

// Expr is a label selector with one expression.
func Expr(key string, op metav1.LabelSelectorOperator, vals ...string) *metav1.LabelSelector {
	return &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: key, Operator: op, Values: vals}}}
}

// PPort is a policy port (a range when end is given).
func PPort(proto corev1.Protocol, port intstr.IntOrString, end ...int32) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port}
	if len(end) > 0 {
		p.EndPort = &end[0]
	}
	return p
}

// Num and Named are numeric and named ports.
func Num(n int) intstr.IntOrString      { return intstr.FromInt32(int32(n)) }
func Named(s string) intstr.IntOrString { return intstr.FromString(s) }

// RequireTruth checks every ordered pod pair (81) on each probe against want.
func RequireTruth(t testing.TB, c *Cluster, pols []*networkingv1.NetworkPolicy, probes []Flow, want func(src, dst Ref, f Flow) bool) {
	t.Helper()
	states := map[int]*rules.State{1: c.Render(1, pols...), 2: c.Render(2, pols...)}
	for n, st := range states {
		for _, err := range st.Errors {
			t.Errorf("node%d: unexpected render error: %v", n, err)
		}
	}
	bad := 0
	for _, pr := range probes {
		for _, s := range AllRefs() {
			for _, d := range AllRefs() {
				if s == d {
					continue
				}
				f := pr
				f.Src, f.Dst = s, d
				got, why := Allowed(states, f)
				if exp := want(s, d, f); got != exp {
					bad++
					if bad <= 5 {
						t.Errorf("%s -> %s %s/%d: allowed=%v, want %v\n%s", s, d, f.Proto, f.Port, got, exp, why)
					}
				}
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d mismatches in all", bad)
	}
}

// From is one peer of a policy rule.
type From = networkingv1.NetworkPolicyPeer

// In is an ingress rule from peers on ports.
func In(peers []From, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports}
}

// Eg is an egress rule to peers on ports.
func Eg(peers []From, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports}
}
