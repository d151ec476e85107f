package bgp

import (
	"testing"
	"time"
)

// A reflector moves (node2 to node3): the client's session with node2
// goes, the one with node3 comes, and for a while no session delivers the
// other nodes' pod CIDRs. The kernel routes stay exactly as they were (no
// write at all) until the new reflector delivers them again.
func TestBackendReflectorMoveKeepsRoutes(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	r.start(t, local(nil))
	rr := map[string]string{LabelRouteReflector: "true"}
	r.apply(t, peer(2, rr), peer(3, nil), peer(4, nil))
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.2"),
		cand("10.244.4.0/24", "10.0.0.4", "10.0.0.2"))
	all := "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87; 10.244.4.0/24 via 10.0.0.4 dev eth0 proto 87"
	r.waitRoutes(t, all)
	waitLearned(t, r, 3)
	ops := len(r.kernel.Ops())
	// node3 is labelled, then node2 unlabelled: the sessions follow.
	r.apply(t, peer(2, rr), peer(3, rr), peer(4, nil))
	r.apply(t, peer(2, nil), peer(3, rr), peer(4, nil))
	if got := peerAddrs(r.sp.Peers()); got != "10.0.0.3" {
		t.Fatalf("sessions after the move %s, want only the new reflector", got)
	}
	// node2's session is gone, node3's has not delivered yet.
	r.sp.Inject()
	waitLearned(t, r, 0)
	r.apply(t, peer(2, nil), peer(3, rr), peer(4, nil))
	if got := r.kernelRoutes(); got != all {
		t.Fatalf("routes while the new reflector has not delivered:\n got %s\nwant %s", got, all)
	}
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.3"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"),
		cand("10.244.4.0/24", "10.0.0.4", "10.0.0.3"))
	waitLearned(t, r, 3)
	r.apply(t, peer(2, nil), peer(3, rr), peer(4, nil))
	if got := r.kernelRoutes(); got != all || len(r.kernel.Ops()) != ops {
		t.Fatalf("routes after the move %s, kernel writes %v (had %d)", got, r.kernel.Ops(), ops)
	}
}

// The session with a mesh peer is re-formed by the peer (its reflector
// role changed): its route is kept while the session is down, and goes
// after the hold time if it never comes back. A route its owner withdraws
// over an established session goes at once.
func TestBackendSessionLossHoldsRoute(t *testing.T) {
	r := newRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	r.b.(*Backend).hold = 300 * time.Millisecond
	r.start(t, local(nil))
	r.apply(t, peer(2, nil), peer(3, nil))
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"))
	both := "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87"
	r.waitRoutes(t, both)
	waitLearned(t, r, 2)
	r.sp.SetDown(addr("10.0.0.2"), true)
	r.sp.Inject(cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"))
	waitLearned(t, r, 1)
	r.apply(t, peer(2, nil), peer(3, nil))
	if got := r.kernelRoutes(); got != both {
		t.Fatalf("routes while node2's session is down:\n got %s\nwant %s", got, both)
	}
	time.Sleep(400 * time.Millisecond)
	r.apply(t, peer(2, nil), peer(3, nil))
	r.waitRoutes(t, "10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87")
	// node3 withdraws its own route, its session up: no hold.
	r.sp.Inject()
	r.waitRoutes(t, "")
}

func waitLearned(t *testing.T, r *rig, n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); r.f.Snapshot().Learned != n || len(r.sp.Learned()) != n; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("learned %d routes, want %d", r.f.Snapshot().Learned, n)
		}
	}
}
