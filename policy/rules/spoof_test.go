package rules_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"

	. "github.com/weftnet/weft/policy/rules"
	"github.com/weftnet/weft/policy/rules/rulestest"
)

// TestSpoofedSourceDropped: with a policy that admits only x/a into x/b, a
// packet that another pod forges with x/a's source address is dropped where
// it enters the node (the attacker's veth), whether the attacker sits on
// b's node (bridged to b) or on another node (routed out to the overlay),
// before conntrack can accept it; x/a's own packets still pass.
func TestSpoofedSourceDropped(t *testing.T) {
	c := rulestest.NewCluster()
	xa, xb := rulestest.Ref{NS: "x", Pod: "a"}, rulestest.Ref{NS: "x", Pod: "b"}
	local, remote := rulestest.Ref{NS: "y", Pod: "a"}, rulestest.Ref{NS: "x", Pod: "c"} // node 1 (b's node), node 2
	if rulestest.NodeOf(xb) != 1 || rulestest.NodeOf(local) != 1 || rulestest.NodeOf(remote) != 2 {
		t.Fatal("fixture layout changed")
	}
	st := states(c, rulestest.WithIngress(rulestest.NP("x", "b-from-a", map[string]string{"pod": "b"}, rulestest.TIn), rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "a")}})))
	for _, ct := range []string{"", "ESTABLISHED"} {
		mustAllow(t, st, rulestest.Flow{Src: xa, Dst: xb, Proto: "udp", Port: 80, CT: ct}, true)
		for _, attacker := range []rulestest.Ref{local, remote} {
			f := rulestest.Flow{Src: attacker, Dst: xb, Proto: "udp", Port: 80, CT: ct, Forge: rulestest.IPOf(xa)}
			mustAllow(t, st, f, false)
			if _, why := rulestest.Allowed(st, f); !spoofDrop(st, f) {
				t.Errorf("%v forging %v: not dropped by the source check\n%s", attacker, xa, why)
			}
			// Forging to a pod no policy selects is dropped as well.
			mustAllow(t, st, rulestest.Flow{Src: attacker, Dst: rulestest.Ref{NS: "z", Pod: "b"}, Proto: "tcp", Port: 80, CT: ct, Forge: rulestest.IPOf(xa)}, false)
		}
	}
	// The attackers' own packets: denied into b by policy, open elsewhere.
	mustAllow(t, st, rulestest.Flow{Src: local, Dst: xb, Proto: "udp", Port: 80}, false)
	mustAllow(t, st, rulestest.Flow{Src: remote, Dst: rulestest.Ref{NS: "z", Pod: "b"}, Proto: "udp", Port: 80}, true)
	// Nothing but the forged cases changes: the full table without policy.
	rulestest.RequireTruth(t, c, nil, allProbes, func(s, d rulestest.Ref, f rulestest.Flow) bool { return true })
}

// spoofDrop traces f on the attacker's node, where the check applies.
func spoofDrop(st map[int]*State, f rulestest.Flow) bool {
	p := Packet{Src: f.Forge, Dst: rulestest.IPOf(f.Dst), Proto: f.Proto, DPort: f.Port, CTState: f.CT,
		InIface: "weft0", OutIface: "weft.vxlan", PhysIn: rulestest.VethOf(f.Src)}
	if rulestest.NodeOf(f.Src) == rulestest.NodeOf(f.Dst) {
		p.OutIface, p.PhysOut, p.Bridged = "weft0", rulestest.VethOf(f.Dst), true
	}
	return st[rulestest.NodeOf(f.Src)].Trace("FORWARD", p).Spoofed()
}

// TestSourceCheckFollowsEndpoints: the check is rendered for every local
// endpoint, known pod or not, and the cached dispatch follows address
// changes.
func TestSourceCheckFollowsEndpoints(t *testing.T) {
	c := rulestest.NewCluster()
	rr := NewRenderer(DefaultConfig())
	render := func() *State {
		return rr.Render(Input{Pods: c.Pods, Namespaces: c.Namespaces, Endpoints: c.Endpoints(1)})
	}
	xa := rulestest.Ref{NS: "x", Pod: "a"}
	st := render()
	src := st.Chain(ChainSource)
	if src == nil || len(src.Rules) != len(c.Endpoints(1))+1 {
		t.Fatalf("%s: %+v", ChainSource, src)
	}
	p := Packet{Src: rulestest.IPOf(xa), Dst: rulestest.IPOf(rulestest.Ref{NS: "x", Pod: "b"}), Proto: "tcp", DPort: 80, InIface: "weft0", OutIface: "weft0",
		PhysIn: rulestest.VethOf(xa), PhysOut: rulestest.VethOf(rulestest.Ref{NS: "x", Pod: "b"}), Bridged: true}
	if tr := st.Trace("FORWARD", p); !tr.Allowed() {
		t.Fatalf("own address dropped: %s", tr)
	}
	// x/a's pod moves to another address (a new record): the old one is now
	// forged, in a cached render as in a fresh one.
	for _, pod := range c.Pods {
		if pod.Namespace == "x" && pod.Name == "a" {
			pod.Status.PodIP, pod.Status.PodIPs = "10.244.1.99", nil
		}
	}
	eps := c.Endpoints(1)
	for i := range eps {
		if eps[i].PodNamespace == "x" && eps[i].PodName == "a" {
			eps[i].IPs = []string{"10.244.1.99/24"}
		}
	}
	for name, st := range map[string]*State{"cached": rr.Render(Input{Pods: c.Pods, Namespaces: c.Namespaces, Endpoints: eps}),
		"fresh": Render(DefaultConfig(), Input{Pods: c.Pods, Namespaces: c.Namespaces, Endpoints: eps})} {
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

// TestSourceCheckScales: with 110 endpoints (the kubelet's default pod
// limit) named as the plugin names veths, every endpoint's own address
// passes on its own veth, any other endpoint's address (or an unknown
// veth) is dropped as spoofed, and no packet is tested against more than
// 32 of the check's rules on the way (one rule per endpoint walked in order
// would test up to 111 on the way to the last veth's).
func TestSourceCheckScales(t *testing.T) {
	const n, maxWalk = 110, 32
	in := Input{Namespaces: []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "s"}}}}
	veths := make([]string, n)
	ips := make([]netip.Addr, n)
	for i := range n {
		h := sha256.Sum256([]byte(fmt.Sprint("pod", i)))
		veths[i], ips[i] = "wv"+hex.EncodeToString(h[:])[:13], netip.AddrFrom4([4]byte{10, 244, 1, byte(2 + i)})
		name := fmt.Sprint("p", i)
		in.Pods = append(in.Pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "s", Name: name, UID: types.UID(name)},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ips[i].String()}})
		in.Endpoints = append(in.Endpoints, endpoint.Endpoint{PodNamespace: "s", PodName: name, PodUID: name,
			HostVeth: veths[i], IPs: []string{ips[i].String() + "/24"}})
	}
	for name, st := range map[string]*State{"fresh": Render(DefaultConfig(), in), "cached": cachedRender(in)} {
		worst, sum, count := 0, 0, 0
		for i := range n {
			for _, j := range []int{i, (i + 1) % n, (i + 37) % n} {
				for _, hook := range []string{"FORWARD", "INPUT"} {
					p := Packet{Src: ips[j], Dst: netip.MustParseAddr("10.244.2.9"), Proto: "udp", DPort: 53,
						InIface: "weft0", OutIface: "weft.vxlan", PhysIn: veths[i], CTState: "ESTABLISHED"}
					if hook == "INPUT" {
						p.Dst, p.OutIface = netip.MustParseAddr("10.244.1.1"), ""
					}
					tr := st.Trace(hook, p)
					if spoofed := i != j; tr.Spoofed() != spoofed || tr.Allowed() == spoofed {
						t.Fatalf("%s %s: %s sending from %s: spoofed=%v\n%s", name, hook, veths[i], ips[j], tr.Spoofed(), tr)
					}
					e := srcEvaluated(st, p)
					worst, sum, count = max(worst, e), sum+e, count+1
				}
			}
		}
		p := Packet{Src: ips[0], Dst: ips[1], Proto: "tcp", DPort: 80, InIface: "weft0", OutIface: "weft0",
			PhysIn: "wv0000000000000", PhysOut: veths[1], Bridged: true}
		if tr := st.Trace("FORWARD", p); !tr.Spoofed() {
			t.Errorf("%s: unknown veth not dropped as spoofed: %s", name, tr)
		}
		if worst > maxWalk {
			t.Errorf("%s: a packet is tested against %d rules of the source check, want <= %d", name, worst, maxWalk)
		}
		t.Logf("%s: %d endpoints: at most %d source-check rules per packet, %.1f on average", name, n, worst, float64(sum)/float64(count))
	}
}

// cachedRender renders in twice with one Renderer: the second render
// reuses the cached dispatch.
func cachedRender(in Input) *State {
	rr := NewRenderer(DefaultConfig())
	rr.Render(in)
	return rr.Render(in)
}

// srcEvaluated is how many rules of the source check a packet from a pod
// is tested against: the walk from WEFT-POL-SRC on.
func srcEvaluated(st *State, p Packet) int {
	only := &State{Chains: st.Chains, IPSets: st.IPSets,
		Jumps: []BuiltinJump{{Builtin: "SRC", Rule: Rule{Action: Action{Verb: Jump, Target: ChainSource}}}}}
	return only.Trace("SRC", p).Evaluated - 1
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
