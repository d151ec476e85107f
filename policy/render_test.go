package policy

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var (
	tcp80     = flow{proto: "tcp", port: 80}
	tcp81     = flow{proto: "tcp", port: 81}
	udp80     = flow{proto: "udp", port: 80}
	udp81     = flow{proto: "udp", port: 81}
	sctp80    = flow{proto: "sctp", port: 80}
	allProbes = []flow{tcp80, tcp81, udp80, udp81}
)

type from = networkingv1.NetworkPolicyPeer

func in(peers []from, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports}
}

func eg(peers []from, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports}
}

func isTCP(f flow, port uint16) bool { return f.proto == "tcp" && f.port == port }

// TestTruthTables covers the NetworkPolicy semantics over all 72 ordered
// pairs of distinct pods (81 with self, which never crosses the node's
// FORWARD path) and TCP/UDP on ports 80 and 81.
func TestTruthTables(t *testing.T) {
	cases := []struct {
		name  string
		pols  []*networkingv1.NetworkPolicy
		probe []flow
		want  func(s, d ref, f flow) bool
	}{
		{"no policy allows all", nil, allProbes, func(s, d ref, f flow) bool { return true }},
		{"default deny ingress in x", []*networkingv1.NetworkPolicy{np("x", "deny", nil, tIn)}, allProbes,
			func(s, d ref, f flow) bool { return d.ns != "x" }},
		{"ingress rules absent, no policyTypes: ingress deny", []*networkingv1.NetworkPolicy{np("x", "deny", nil, nil)}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d.ns != "x" }},
		{"default deny egress in y", []*networkingv1.NetworkPolicy{np("y", "deny", nil, tEg)}, allProbes,
			func(s, d ref, f flow) bool { return s.ns != "y" }},
		{"egress rules imply Egress when policyTypes empty", []*networkingv1.NetworkPolicy{
			withEgress(np("y", "eg", nil, nil), eg([]from{{NamespaceSelector: ls("ns", "z")}}))}, []flow{tcp80},
			// Ingress is also implied (with no rules: deny all to y).
			func(s, d ref, f flow) bool { return d.ns != "y" && (s.ns != "y" || d.ns == "z") }},
		{"policyTypes Ingress ignores egress rules", []*networkingv1.NetworkPolicy{
			withEgress(withIngress(np("y", "in-only", nil, tIn), in(nil)), eg([]from{{NamespaceSelector: ls("ns", "z")}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool { return true }},
		{"allow from namespace y to x/a", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "from-y", map[string]string{"pod": "a"}, tIn), in([]from{{NamespaceSelector: ls("ns", "y")}}))}, allProbes,
			func(s, d ref, f flow) bool { return d != (ref{"x", "a"}) || s.ns == "y" }},
		{"podSelector peer stays in the policy namespace", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "from-b", nil, tIn), in([]from{{PodSelector: ls("pod", "b")}}))}, []flow{tcp80, udp81},
			func(s, d ref, f flow) bool { return d.ns != "x" || s == ref{"x", "b"} }},
		{"namespaceSelector AND podSelector in one peer", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "combined", nil, tIn), in([]from{{NamespaceSelector: expr("ns", metav1.LabelSelectorOpIn, "y", "z"), PodSelector: ls("pod", "b")}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d.ns != "x" || (s.ns != "x" && s.pod == "b") }},
		{"two peers are OR", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "or", nil, tIn), in([]from{{NamespaceSelector: ls("ns", "y")}, {PodSelector: ls("pod", "c")}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d.ns != "x" || s.ns == "y" || s == ref{"x", "c"} }},
		{"empty namespaceSelector: every namespace", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "all-ns-c", nil, tIn), in([]from{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: ls("pod", "c")}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d.ns != "x" || s.pod == "c" }},
		{"matchExpressions NotIn", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "notin", nil, tIn), in([]from{{NamespaceSelector: expr("ns", metav1.LabelSelectorOpNotIn, "y")}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d.ns != "x" || s.ns != "y" }},
		{"matchExpressions Exists / DoesNotExist on pods", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "exists", nil, tIn), in([]from{{NamespaceSelector: expr("ns", metav1.LabelSelectorOpExists), PodSelector: expr("pod", metav1.LabelSelectorOpIn, "a")}})),
			withIngress(np("x", "dne", map[string]string{"pod": "c"}, tIn), in([]from{{NamespaceSelector: expr("nope", metav1.LabelSelectorOpDoesNotExist)}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool {
				if d.ns != "x" {
					return true
				}
				return s.pod == "a" || d.pod == "c" // x/c: also from every namespace lacking label "nope"
			}},
		{"podSelector in policy selects only some pods; others stay open", []*networkingv1.NetworkPolicy{np("x", "deny-a", map[string]string{"pod": "a"}, tBoth)}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d != (ref{"x", "a"}) && s != (ref{"x", "a"}) }},
		{"port-only rule: TCP 80 from anywhere", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "p80", nil, tIn), in(nil, pPort(corev1.ProtocolTCP, num(80))))}, allProbes,
			func(s, d ref, f flow) bool { return d.ns != "x" || isTCP(f, 80) }},
		{"port without number: all UDP", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "udp", nil, tIn), in(nil, networkingv1.NetworkPolicyPort{Protocol: protoPtr(corev1.ProtocolUDP)}))}, allProbes,
			func(s, d ref, f flow) bool { return d.ns != "x" || f.proto == "udp" }},
		{"peer-only rule: all ports from pod b", []*networkingv1.NetworkPolicy{
			withIngress(np("y", "b", nil, tIn), in([]from{{PodSelector: ls("pod", "b")}}))}, allProbes,
			func(s, d ref, f flow) bool { return d.ns != "y" || s == ref{"y", "b"} }},
		{"endPort range 80-81 TCP", []*networkingv1.NetworkPolicy{
			withIngress(np("z", "range", nil, tIn), in(nil, pPort(corev1.ProtocolTCP, num(80), 81)))}, allProbes,
			func(s, d ref, f flow) bool { return d.ns != "z" || f.proto == "tcp" }},
		{"endPort range 81-90 TCP", []*networkingv1.NetworkPolicy{
			withIngress(np("z", "range", nil, tIn), in(nil, pPort(corev1.ProtocolTCP, num(81), 90)))}, allProbes,
			func(s, d ref, f flow) bool { return d.ns != "z" || isTCP(f, 81) }},
		{"named port resolved per destination pod (ingress)", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "http", nil, tIn), in(nil, pPort(corev1.ProtocolTCP, named("http"))))}, allProbes,
			func(s, d ref, f flow) bool {
				if d.ns != "x" {
					return true
				}
				return isTCP(f, 80) && d.pod != "c" || isTCP(f, 81) && d.pod == "c"
			}},
		{"named UDP port", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "u81", nil, tIn), in(nil, pPort(corev1.ProtocolUDP, named("serve-81-udp"))))}, allProbes,
			func(s, d ref, f flow) bool { return d.ns != "x" || f.proto == "udp" && f.port == 81 }},
		{"named port resolved per destination pod (egress)", []*networkingv1.NetworkPolicy{
			withEgress(np("y", "http-out", nil, tEg), eg(nil, pPort(corev1.ProtocolTCP, named("http"))))}, allProbes,
			func(s, d ref, f flow) bool {
				if s.ns != "y" {
					return true
				}
				return isTCP(f, 80) && d.pod != "c" || isTCP(f, 81) && d.pod == "c"
			}},
		{"egress to a namespace on a named port", []*networkingv1.NetworkPolicy{
			withEgress(np("y", "to-z", map[string]string{"pod": "a"}, tEg), eg([]from{{NamespaceSelector: ls("ns", "z")}}, pPort(corev1.ProtocolTCP, named("http"))))}, []flow{tcp80, tcp81},
			func(s, d ref, f flow) bool {
				if s != (ref{"y", "a"}) {
					return true
				}
				return d.ns == "z" && (isTCP(f, 80) && d.pod != "c" || isTCP(f, 81) && d.pod == "c")
			}},
		{"union of two policies", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "from-y", nil, tIn), in([]from{{NamespaceSelector: ls("ns", "y")}}, pPort(corev1.ProtocolTCP, num(80)))),
			withIngress(np("x", "from-z", nil, tIn), in([]from{{NamespaceSelector: ls("ns", "z")}}, pPort(corev1.ProtocolUDP, num(81))))}, allProbes,
			func(s, d ref, f flow) bool {
				return d.ns != "x" || s.ns == "y" && isTCP(f, 80) || s.ns == "z" && f.proto == "udp" && f.port == 81
			}},
		{"ipBlock with except (ingress)", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "block", nil, tIn), in([]from{{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16", Except: []string{"10.244.2.0/24"}}}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d.ns != "x" || nodeOf(s) == 1 }},
		{"ipBlock with except (egress)", []*networkingv1.NetworkPolicy{
			withEgress(np("z", "block-out", nil, tEg), eg([]from{{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.1.0/24", Except: []string{"10.244.1.20/30"}}}}))}, []flow{udp80},
			func(s, d ref, f flow) bool {
				return s.ns != "z" || nodeOf(d) == 1 && d != ref{"y", "a"} // y/a is 10.244.1.20
			}},
		{"ipBlock 0.0.0.0/0 except a /32", []*networkingv1.NetworkPolicy{
			withIngress(np("x", "all-but", nil, tIn), in([]from{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{ipOf(ref{"z", "c"}).String() + "/32"}}}}))}, []flow{tcp80},
			func(s, d ref, f flow) bool { return d.ns != "x" || s != ref{"z", "c"} }},
		{"ingress and egress together", []*networkingv1.NetworkPolicy{
			withEgress(withIngress(np("x", "both", map[string]string{"pod": "b"}, tBoth),
				in([]from{{PodSelector: ls("pod", "a")}})), eg([]from{{NamespaceSelector: ls("ns", "y"), PodSelector: ls("pod", "c")}}, pPort(corev1.ProtocolTCP, num(81))))}, []flow{tcp80, tcp81},
			func(s, d ref, f flow) bool {
				if d == (ref{"x", "b"}) {
					return s == ref{"x", "a"}
				}
				if s == (ref{"x", "b"}) {
					return d == ref{"y", "c"} && isTCP(f, 81)
				}
				return true
			}},
	}
	c := newCluster()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { requireTruth(t, c, tc.pols, tc.probe, tc.want) })
	}
}

func protoPtr(p corev1.Protocol) *corev1.Protocol { return &p }
