package rules_test

import (
	"net/netip"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// TestNewTCPWithoutSYNDropped: a TCP segment that conntrack sees as NEW but
// that is not a SYN (the rest of a connection whose entry was deleted after
// a policy denied it) is dropped, from and to local pods, on the same node
// and across nodes, whatever the policies say; a SYN and UDP are decided by
// policy as before, and segments of an established connection pass.
func TestNewTCPWithoutSYNDropped(t *testing.T) {
	c := rulestest.NewCluster()
	xa, xb := rulestest.Ref{NS: "x", Pod: "a"}, rulestest.Ref{NS: "x", Pod: "b"}
	pols := []*networkingv1.NetworkPolicy{rulestest.WithIngress(rulestest.NP("x", "b-from-a", map[string]string{"pod": "b"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "a")}}))}
	byPolicy := func(s, d rulestest.Ref) bool { return d != xb || s == xa }
	probes := []rulestest.Flow{
		{Proto: "tcp", Port: 80},
		{Proto: "tcp", Port: 80, NotSYN: true},
		{Proto: "tcp", Port: 80, NotSYN: true, CT: "ESTABLISHED"},
		{Proto: "udp", Port: 80, NotSYN: true}, // no TCP flags: the flag means nothing
	}
	rulestest.RequireTruth(t, c, pols, probes, func(s, d rulestest.Ref, f rulestest.Flow) bool {
		switch {
		case f.CT == "ESTABLISHED":
			return true
		case f.Proto == "tcp" && f.NotSYN:
			return false
		}
		return byPolicy(s, d)
	})
	// The case of the review: b keeps sending on a -> b after the policy
	// denied it; a's ingress is open, so only the SYN check stops it.
	st := states(c, pols...)
	if ok, why := rulestest.Allowed(st, rulestest.Flow{Src: xb, Dst: xa, Proto: "tcp", Port: 40000, NotSYN: true}); ok {
		t.Errorf("NEW non-SYN b -> a allowed:\n%s", why)
	} else if !strings.Contains(why, "NEW") || !strings.Contains(why, "--tcp-flags FIN,SYN,RST,ACK SYN") {
		t.Errorf("NEW non-SYN b -> a not dropped by the SYN check:\n%s", why)
	}
	// From outside the cluster to a pod: the same.
	out := netip.MustParseAddr("192.0.2.7")
	for _, notSYN := range []bool{false, true} {
		ok, why := rulestest.Allowed(st, rulestest.Flow{SrcAddr: out, Dst: rulestest.Ref{NS: "y", Pod: "b"}, Proto: "tcp", Port: 80, NotSYN: notSYN})
		if ok == notSYN {
			t.Errorf("outside -> y/b, not SYN %v: allowed %v\n%s", notSYN, ok, why)
		}
	}
}
