package rules_test

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

var (
	tcp80     = rulestest.Flow{Proto: "tcp", Port: 80}
	tcp81     = rulestest.Flow{Proto: "tcp", Port: 81}
	udp80     = rulestest.Flow{Proto: "udp", Port: 80}
	udp81     = rulestest.Flow{Proto: "udp", Port: 81}
	sctp80    = rulestest.Flow{Proto: "sctp", Port: 80}
	allProbes = []rulestest.Flow{tcp80, tcp81, udp80, udp81}
)

func isTCP(f rulestest.Flow, port uint16) bool { return f.Proto == "tcp" && f.Port == port }

// TestTruthTables covers the NetworkPolicy semantics over all 72 ordered
// pairs of distinct pods (81 with self, which never crosses the node's
// FORWARD path) and TCP/UDP on ports 80 and 81.
func TestTruthTables(t *testing.T) {
	cases := []struct {
		name  string
		pols  []*networkingv1.NetworkPolicy
		probe []rulestest.Flow
		want  func(s, d rulestest.Ref, f rulestest.Flow) bool
	}{
		{"no policy allows all", nil, allProbes, func(s, d rulestest.Ref, f rulestest.Flow) bool { return true }},
		{"default deny ingress in x", []*networkingv1.NetworkPolicy{rulestest.NP("x", "deny", nil, rulestest.TIn)}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" }},
		{"ingress rules absent, no policyTypes: ingress deny", []*networkingv1.NetworkPolicy{rulestest.NP("x", "deny", nil, nil)}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" }},
		{"default deny egress in y", []*networkingv1.NetworkPolicy{rulestest.NP("y", "deny", nil, rulestest.TEg)}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return s.NS != "y" }},
		{"egress rules imply Egress when policyTypes empty", []*networkingv1.NetworkPolicy{
			rulestest.WithEgress(rulestest.NP("y", "eg", nil, nil), rulestest.Eg([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "z")}}))}, []rulestest.Flow{tcp80},
			// Ingress is also implied (with no rules: deny all to y).
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "y" && (s.NS != "y" || d.NS == "z") }},
		{"policyTypes Ingress ignores egress rules", []*networkingv1.NetworkPolicy{
			rulestest.WithEgress(rulestest.WithIngress(rulestest.NP("y", "in-only", nil, rulestest.TIn), rulestest.In(nil)), rulestest.Eg([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "z")}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return true }},
		{"allow from namespace y to x/a", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "from-y", map[string]string{"pod": "a"}, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y")}}))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d != (rulestest.Ref{NS: "x", Pod: "a"}) || s.NS == "y"
			}},
		{"podSelector peer stays in the policy namespace", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "from-b", nil, rulestest.TIn), rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "b")}}))}, []rulestest.Flow{tcp80, udp81},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d.NS != "x" || s == rulestest.Ref{NS: "x", Pod: "b"}
			}},
		{"namespaceSelector AND podSelector in one peer", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "combined", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.Expr("ns", metav1.LabelSelectorOpIn, "y", "z"), PodSelector: rulestest.LS("pod", "b")}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" || (s.NS != "x" && s.Pod == "b") }},
		{"two peers are OR", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "or", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y")}, {PodSelector: rulestest.LS("pod", "c")}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d.NS != "x" || s.NS == "y" || s == rulestest.Ref{NS: "x", Pod: "c"}
			}},
		{"empty namespaceSelector: every namespace", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "all-ns-c", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: rulestest.LS("pod", "c")}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" || s.Pod == "c" }},
		{"matchExpressions NotIn", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "notin", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.Expr("ns", metav1.LabelSelectorOpNotIn, "y")}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" || s.NS != "y" }},
		{"matchExpressions Exists / DoesNotExist on pods", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "exists", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.Expr("ns", metav1.LabelSelectorOpExists), PodSelector: rulestest.Expr("pod", metav1.LabelSelectorOpIn, "a")}})),
			rulestest.WithIngress(rulestest.NP("x", "dne", map[string]string{"pod": "c"}, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.Expr("nope", metav1.LabelSelectorOpDoesNotExist)}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				if d.NS != "x" {
					return true
				}
				return s.Pod == "a" || d.Pod == "c" // x/c: also from every namespace lacking label "nope"
			}},
		{"podSelector in policy selects only some pods; others stay open", []*networkingv1.NetworkPolicy{rulestest.NP("x", "deny-a", map[string]string{"pod": "a"}, rulestest.TBoth)}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d != (rulestest.Ref{NS: "x", Pod: "a"}) && s != (rulestest.Ref{NS: "x", Pod: "a"})
			}},
		{"port-only rule: TCP 80 from anywhere", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "p80", nil, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80))))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" || isTCP(f, 80) }},
		{"port without number: all UDP", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "udp", nil, rulestest.TIn), rulestest.In(nil, networkingv1.NetworkPolicyPort{Protocol: protoPtr(corev1.ProtocolUDP)}))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" || f.Proto == "udp" }},
		{"peer-only rule: all ports from pod b", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("y", "b", nil, rulestest.TIn), rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "b")}}))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d.NS != "y" || s == rulestest.Ref{NS: "y", Pod: "b"}
			}},
		{"endPort range 80-81 TCP", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("z", "range", nil, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80), 81)))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "z" || f.Proto == "tcp" }},
		{"endPort range 81-90 TCP", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("z", "range", nil, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(81), 90)))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "z" || isTCP(f, 81) }},
		{"named port resolved per destination pod (ingress)", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "http", nil, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http"))))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				if d.NS != "x" {
					return true
				}
				return isTCP(f, 80) && d.Pod != "c" || isTCP(f, 81) && d.Pod == "c"
			}},
		{"named UDP port", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "u81", nil, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolUDP, rulestest.Named("serve-81-udp"))))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d.NS != "x" || f.Proto == "udp" && f.Port == 81
			}},
		{"named port resolved per destination pod (egress)", []*networkingv1.NetworkPolicy{
			rulestest.WithEgress(rulestest.NP("y", "http-out", nil, rulestest.TEg), rulestest.Eg(nil, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http"))))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				if s.NS != "y" {
					return true
				}
				return isTCP(f, 80) && d.Pod != "c" || isTCP(f, 81) && d.Pod == "c"
			}},
		{"egress to a namespace on a named port", []*networkingv1.NetworkPolicy{
			rulestest.WithEgress(rulestest.NP("y", "to-z", map[string]string{"pod": "a"}, rulestest.TEg), rulestest.Eg([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "z")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http"))))}, []rulestest.Flow{tcp80, tcp81},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				if s != (rulestest.Ref{NS: "y", Pod: "a"}) {
					return true
				}
				return d.NS == "z" && (isTCP(f, 80) && d.Pod != "c" || isTCP(f, 81) && d.Pod == "c")
			}},
		{"union of two policies", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "from-y", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80)))),
			rulestest.WithIngress(rulestest.NP("x", "from-z", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "z")}}, rulestest.PPort(corev1.ProtocolUDP, rulestest.Num(81))))}, allProbes,
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d.NS != "x" || s.NS == "y" && isTCP(f, 80) || s.NS == "z" && f.Proto == "udp" && f.Port == 81
			}},
		{"ipBlock with except (ingress)", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "block", nil, rulestest.TIn), rulestest.In([]rulestest.From{{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.0.0/16", Except: []string{"10.244.2.0/24"}}}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool { return d.NS != "x" || rulestest.NodeOf(s) == 1 }},
		{"ipBlock with except (egress)", []*networkingv1.NetworkPolicy{
			rulestest.WithEgress(rulestest.NP("z", "block-out", nil, rulestest.TEg), rulestest.Eg([]rulestest.From{{IPBlock: &networkingv1.IPBlock{CIDR: "10.244.1.0/24", Except: []string{"10.244.1.20/30"}}}}))}, []rulestest.Flow{udp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return s.NS != "z" || rulestest.NodeOf(d) == 1 && d != rulestest.Ref{NS: "y", Pod: "a"} // y/a is 10.244.1.20
			}},
		{"ipBlock 0.0.0.0/0 except a /32", []*networkingv1.NetworkPolicy{
			rulestest.WithIngress(rulestest.NP("x", "all-but", nil, rulestest.TIn), rulestest.In([]rulestest.From{{IPBlock: &networkingv1.IPBlock{CIDR: "0.0.0.0/0", Except: []string{rulestest.IPOf(rulestest.Ref{NS: "z", Pod: "c"}).String() + "/32"}}}}))}, []rulestest.Flow{tcp80},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				return d.NS != "x" || s != rulestest.Ref{NS: "z", Pod: "c"}
			}},
		{"ingress and egress together", []*networkingv1.NetworkPolicy{
			rulestest.WithEgress(rulestest.WithIngress(rulestest.NP("x", "both", map[string]string{"pod": "b"}, rulestest.TBoth),
				rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "a")}})), rulestest.Eg([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y"), PodSelector: rulestest.LS("pod", "c")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(81))))}, []rulestest.Flow{tcp80, tcp81},
			func(s, d rulestest.Ref, f rulestest.Flow) bool {
				if d == (rulestest.Ref{NS: "x", Pod: "b"}) {
					return s == rulestest.Ref{NS: "x", Pod: "a"}
				}
				if s == (rulestest.Ref{NS: "x", Pod: "b"}) {
					return d == rulestest.Ref{NS: "y", Pod: "c"} && isTCP(f, 81)
				}
				return true
			}},
	}
	c := rulestest.NewCluster()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { rulestest.RequireTruth(t, c, tc.pols, tc.probe, tc.want) })
	}
}

func protoPtr(p corev1.Protocol) *corev1.Protocol { return &p }
