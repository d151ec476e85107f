package policy

import (
	"net/netip"
	"strings"
	"testing"

	networkingv1 "k8s.io/api/networking/v1"
)

// TestNewTCPWithoutSYNDropped: a TCP segment that conntrack sees as NEW but
// that is not a SYN (the rest of a connection whose entry was deleted after
// a policy denied it) is dropped, from and to local pods, on the same node
// and across nodes, whatever the policies say; a SYN and UDP are decided by
// policy as before, and segments of an established connection pass.
func TestNewTCPWithoutSYNDropped(t *testing.T) {
	c := newCluster()
	xa, xb := ref{"x", "a"}, ref{"x", "b"}
	pols := []*networkingv1.NetworkPolicy{withIngress(np("x", "b-from-a", map[string]string{"pod": "b"}, tIn),
		in([]from{{PodSelector: ls("pod", "a")}}))}
	byPolicy := func(s, d ref) bool { return d != xb || s == xa }
	probes := []flow{
		{proto: "tcp", port: 80},
		{proto: "tcp", port: 80, notSYN: true},
		{proto: "tcp", port: 80, notSYN: true, ct: "ESTABLISHED"},
		{proto: "udp", port: 80, notSYN: true}, // no TCP flags: the flag means nothing
	}
	requireTruth(t, c, pols, probes, func(s, d ref, f flow) bool {
		switch {
		case f.ct == "ESTABLISHED":
			return true
		case f.proto == "tcp" && f.notSYN:
			return false
		}
		return byPolicy(s, d)
	})
	// The case of the review: b keeps sending on a -> b after the policy
	// denied it; a's ingress is open, so only the SYN check stops it.
	st := states(c, pols...)
	if ok, why := allowed(st, flow{src: xb, dst: xa, proto: "tcp", port: 40000, notSYN: true}); ok {
		t.Errorf("NEW non-SYN b -> a allowed:\n%s", why)
	} else if !strings.Contains(why, "NEW") || !strings.Contains(why, "--tcp-flags FIN,SYN,RST,ACK SYN") {
		t.Errorf("NEW non-SYN b -> a not dropped by the SYN check:\n%s", why)
	}
	// From outside the cluster to a pod: the same.
	out := netip.MustParseAddr("192.0.2.7")
	for _, notSYN := range []bool{false, true} {
		ok, why := allowed(st, flow{srcAddr: out, dst: ref{"y", "b"}, proto: "tcp", port: 80, notSYN: notSYN})
		if ok == notSYN {
			t.Errorf("outside -> y/b, not SYN %v: allowed %v\n%s", notSYN, ok, why)
		}
	}
}
