package policy

import (
	"testing"
)

// TestSpoofedSourceDropped: with a policy that admits only x/a into x/b, a
// packet that another pod forges with x/a's source address is dropped where
// it enters the node (the attacker's veth), whether the attacker sits on
// b's node (bridged to b) or on another node (routed out to the overlay),
// before conntrack can accept it; x/a's own packets still pass.
func TestSpoofedSourceDropped(t *testing.T) {
	c := newCluster()
	xa, xb := ref{"x", "a"}, ref{"x", "b"}
	local, remote := ref{"y", "a"}, ref{"x", "c"} // node 1 (b's node), node 2
	if nodeOf(xb) != 1 || nodeOf(local) != 1 || nodeOf(remote) != 2 {
		t.Fatal("fixture layout changed")
	}
	st := states(c, withIngress(np("x", "b-from-a", map[string]string{"pod": "b"}, tIn), in([]from{{PodSelector: ls("pod", "a")}})))
	for _, ct := range []string{"", "ESTABLISHED"} {
		mustAllow(t, st, flow{src: xa, dst: xb, proto: "udp", port: 80, ct: ct}, true)
		for _, attacker := range []ref{local, remote} {
			f := flow{src: attacker, dst: xb, proto: "udp", port: 80, ct: ct, forge: ipOf(xa)}
			mustAllow(t, st, f, false)
			if _, why := allowed(st, f); !spoofDrop(st, f) {
				t.Errorf("%v forging %v: not dropped by the source check\n%s", attacker, xa, why)
			}
			// Forging to a pod no policy selects is dropped as well.
			mustAllow(t, st, flow{src: attacker, dst: ref{"z", "b"}, proto: "tcp", port: 80, ct: ct, forge: ipOf(xa)}, false)
		}
	}
	// The attackers' own packets: denied into b by policy, open elsewhere.
	mustAllow(t, st, flow{src: local, dst: xb, proto: "udp", port: 80}, false)
	mustAllow(t, st, flow{src: remote, dst: ref{"z", "b"}, proto: "udp", port: 80}, true)
	// Nothing but the forged cases changes: the full table without policy.
	requireTruth(t, c, nil, allProbes, func(s, d ref, f flow) bool { return true })
}

// spoofDrop traces f on the attacker's node, where the check applies.
func spoofDrop(st map[int]*State, f flow) bool {
	p := Packet{Src: f.forge, Dst: ipOf(f.dst), Proto: f.proto, DPort: f.port, CTState: f.ct,
		InIface: "weft0", OutIface: "weft.vxlan", PhysIn: vethOf(f.src)}
	if nodeOf(f.src) == nodeOf(f.dst) {
		p.OutIface, p.PhysOut, p.Bridged = "weft0", vethOf(f.dst), true
	}
	return st[nodeOf(f.src)].Trace("FORWARD", p).Spoofed()
}

// TestSourceCheckFollowsEndpoints: the check is rendered for every local
// endpoint, known pod or not, and the cached dispatch follows address
// changes.
func TestSourceCheckFollowsEndpoints(t *testing.T) {
	c := newCluster()
	rr := NewRenderer(DefaultConfig())
	render := func() *State {
		return rr.Render(Input{Pods: c.pods, Namespaces: c.namespaces, Endpoints: c.endpoints(1)})
	}
	xa := ref{"x", "a"}
	st := render()
	src := st.Chain(ChainSource)
	if src == nil || len(src.Rules) != len(c.endpoints(1))+1 {
		t.Fatalf("%s: %+v", ChainSource, src)
	}
	p := Packet{Src: ipOf(xa), Dst: ipOf(ref{"x", "b"}), Proto: "tcp", DPort: 80, InIface: "weft0", OutIface: "weft0",
		PhysIn: vethOf(xa), PhysOut: vethOf(ref{"x", "b"}), Bridged: true}
	if tr := st.Trace("FORWARD", p); !tr.Allowed() {
		t.Fatalf("own address dropped: %s", tr)
	}
	// x/a's pod moves to another address (a new record): the old one is now
	// forged, in a cached render as in a fresh one.
	for _, pod := range c.pods {
		if pod.Namespace == "x" && pod.Name == "a" {
			pod.Status.PodIP, pod.Status.PodIPs = "10.244.1.99", nil
		}
	}
	eps := c.endpoints(1)
	for i := range eps {
		if eps[i].PodNamespace == "x" && eps[i].PodName == "a" {
			eps[i].IPs = []string{"10.244.1.99/24"}
		}
	}
	for name, st := range map[string]*State{"cached": rr.Render(Input{Pods: c.pods, Namespaces: c.namespaces, Endpoints: eps}),
		"fresh": Render(DefaultConfig(), Input{Pods: c.pods, Namespaces: c.namespaces, Endpoints: eps})} {
		if tr := st.Trace("FORWARD", p); tr.Allowed() || !tr.Spoofed() {
			t.Errorf("%s: old address after the move: %s", name, tr)
		}
		q := p
		q.Src = addr("10.244.1.99")
		if tr := st.Trace("FORWARD", q); !tr.Allowed() {
			t.Errorf("%s: new address dropped: %s", name, tr)
		}
	}
}
