package bgp

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/nettopo"
)

// netNode is one node of a privileged test: a namespace on the underlay,
// its Node description and its speaker process.
type netNode struct {
	topo *nettopo.Node
	node Node
	sp   *speakerProc
	cfg  Config
}

// newNetCluster attaches n nodes (1..n) to a fresh underlay and starts a
// speaker in each; the nodes listed in reflectors are route reflectors.
func newNetCluster(t *testing.T, n int, reflectors ...int) (*nettopo.Underlay, []*netNode) {
	u := nettopo.NewUnderlay(t)
	var out []*netNode
	for i := 1; i <= n; i++ {
		tn := u.AddNode(t, i)
		nd := Node{Name: tn.Name, Addr: tn.UnderlayIP, ASN: DefaultASN, PodCIDRs: []netip.Prefix{tn.PodCIDR},
			Labels: map[string]string{"index": fmt.Sprint(i)}}
		for _, r := range reflectors {
			nd.RouteReflector = nd.RouteReflector || r == i
		}
		nn := &netNode{topo: tn, node: nd, cfg: Config{RouterID: tn.UnderlayIP, ASN: DefaultASN, ListenAddr: tn.UnderlayIP,
			ConnectRetry: time.Second, GracefulRestart: 30 * time.Second}}
		nn.start(t)
		out = append(out, nn)
	}
	return u, out
}

func (n *netNode) start(t *testing.T) {
	t.Helper()
	n.sp = startSpeakerProc(t, n.topo.NS)
	n.sp.must(helperCmd{Op: "start", Config: &n.cfg})
}

func nodesOf(ns []*netNode) []Node {
	var out []Node
	for _, n := range ns {
		out = append(out, n.node)
	}
	return out
}

// configure gives the node the sessions and import policy the topology
// computes for cfg (plus extra peers), and has it advertise its pod CIDR.
// It advertises before it adds the peers, as the backend must: after a
// restart, a peer drops its stale copies of our routes at our first
// End-of-RIB, so that first UPDATE has to carry them.
func (n *netNode) configure(t *testing.T, all []*netNode, cfg BackendConfig, passwords map[netip.Addr]string, extra ...Peer) []Session {
	t.Helper()
	sessions := Sessions(n.node, nodesOf(all), cfg, nil)
	peers := extra
	for _, s := range sessions {
		s.Peer.Password = passwords[s.Peer.Addr]
		peers = append(peers, s.Peer)
	}
	pol := PolicyFor(n.node, nodesOf(all), sessions)
	n.sp.must(helperCmd{Op: "policy", Policy: &pol})
	n.sp.must(helperCmd{Op: "advertise", Prefixes: n.node.PodCIDRs})
	n.sp.must(helperCmd{Op: "peers", Peers: peers})
	return sessions
}

func (n *netNode) routeTo(o *netNode) Route {
	return Route{Prefix: o.node.PodCIDRs[0], NextHop: o.node.Addr}
}

// learnedString is the learned set without the sender and stale flag.
func learnedString(rs []Route) string {
	var out []Route
	for _, r := range rs {
		out = append(out, Route{Prefix: r.Prefix, NextHop: r.NextHop})
	}
	return routesString(out)
}

// inNS runs a command in a node's namespace and returns its output.
func inNS(t *testing.T, n *nettopo.Node, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.NS.Path()}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v in %s: %v\n%s", args, n.Name, err, out)
	}
	return string(out)
}

// bgpConnections lists the remote addresses of established TCP connections
// to or from port 179 in a node's namespace.
func bgpConnections(t *testing.T, n *nettopo.Node) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(inNS(t, n, "ss", "-tnH", "state", "established")), "\n") {
		f := strings.Fields(l)
		if len(f) < 4 || !strings.Contains(f[2]+f[3], ":179") {
			continue
		}
		out = append(out, f[3][:strings.LastIndex(f[3], ":")])
	}
	return out
}

func TestNetnsMeshAndGracefulRestart(t *testing.T) {
	_, nodes := newNetCluster(t, 3)
	cfg := defaultCfg()
	for _, n := range nodes {
		n.configure(t, nodes, cfg, nil)
	}
	// The listener is inside each node's namespace, on its underlay IP.
	for _, n := range nodes {
		if l := inNS(t, n.topo, "ss", "-ltnH"); !strings.Contains(l, n.node.Addr.String()+":179") {
			t.Errorf("%s: no listener on %s:179:\n%s", n.topo.Name, n.node.Addr, l)
		}
	}
	for i, n := range nodes {
		var want []Route
		for j, o := range nodes {
			if i != j {
				want = append(want, n.routeTo(o))
			}
		}
		waitFor(t, 20*time.Second, n.topo.Name+" learns both other pod CIDRs", func() bool {
			return learnedString(n.sp.learned()) == routesString(want)
		})
		if c := bgpConnections(t, n.topo); len(c) != 2 {
			t.Errorf("%s: %d BGP connections %v, want 2", n.topo.Name, len(c), c)
		}
	}

	checkGracefulRestart(t, nodes, cfg)
	n1, n2 := nodes[0], nodes[1]
	// A clean Stop withdraws: peers drop the routes at once.
	// Only GoBGP's server loop, kept for the next Start, may remain.
	if r := n1.sp.must(helperCmd{Op: "stop"}); r.Goroutines > 1 {
		t.Errorf("%d goroutines more after Stop than before Start, want at most 1 (GoBGP's server loop)", r.Goroutines)
	}
	waitFor(t, 10*time.Second, "node2 drops node1's route after a clean stop", func() bool {
		return learnedString(n2.sp.learned()) == routesString([]Route{n2.routeTo(nodes[2])})
	})
}

// checkGracefulRestart kills node1's speaker and starts it again.
func checkGracefulRestart(t *testing.T, nodes []*netNode, cfg BackendConfig) {
	// Graceful restart: node1's speaker dies without a NOTIFICATION and
	// comes back. node2 must keep node1's route the whole time, and get
	// it re-advertised within seconds, even though one of node1's
	// configured peers is down (a speaker that defers its advertisements
	// until every peer sent End-of-RIB would wait for its deferral timer:
	// kube-router#1323).
	n1, n2 := nodes[0], nodes[1]
	n1.sp.kill()
	killed := time.Now()
	waitFor(t, 10*time.Second, "node2 marks node1's route stale", func() bool {
		for _, r := range n2.sp.learned() {
			if r.Prefix == n1.node.PodCIDRs[0] {
				return r.Stale
			}
		}
		t.Fatalf("node2 dropped node1's route %v after the speaker died", time.Since(killed))
		return false
	})
	n1.start(t)
	restarted := time.Now()
	n1.configure(t, nodes, cfg, nil, Peer{Addr: netip.MustParseAddr("192.168.77.99"), ASN: DefaultASN})
	waitFor(t, 15*time.Second, "node2 gets node1's route fresh again", func() bool {
		for _, r := range n2.sp.learned() {
			if r.Prefix == n1.node.PodCIDRs[0] {
				return !r.Stale
			}
		}
		r := n2.sp.must(helperCmd{Op: "learned"})
		t.Fatalf("node2 dropped node1's route %v after the restart: learned %+v rejected %+v states %+v",
			time.Since(restarted), r.Learned, r.Rejected, n2.sp.states())
		return false
	})
	// GoBGP v3 keeps a dropped session Idle for a fixed 5 s before it
	// accepts or dials again, so the bound is that plus a connect retry;
	// a deferral timer (kube-router#1323) would hold it for minutes.
	if d := time.Since(restarted); d > 10*time.Second {
		t.Errorf("re-advertised after %v, want within seconds", d)
	}
	t.Logf("route re-advertised %v after the restart", time.Since(restarted).Round(time.Millisecond))
	waitFor(t, 10*time.Second, "restarted node1 learns the others", func() bool {
		return learnedString(n1.sp.learned()) == routesString([]Route{n1.routeTo(nodes[1]), n1.routeTo(nodes[2])})
	})
}

func TestNetnsRouteReflector(t *testing.T) {
	_, nodes := newNetCluster(t, 3, 1)
	cfg := defaultCfg()
	for _, n := range nodes {
		n.configure(t, nodes, cfg, nil)
	}
	rr, c2, c3 := nodes[0], nodes[1], nodes[2]
	waitFor(t, 20*time.Second, "client node2 learns node3's CIDR via the reflector", func() bool {
		return learnedString(c2.sp.learned()) == routesString([]Route{c2.routeTo(rr), c2.routeTo(c3)})
	})
	waitFor(t, 20*time.Second, "client node3 learns node2's CIDR via the reflector", func() bool {
		return learnedString(c3.sp.learned()) == routesString([]Route{c3.routeTo(rr), c3.routeTo(c2)})
	})
	waitFor(t, 10*time.Second, "the reflector learns both", func() bool {
		return learnedString(rr.sp.learned()) == routesString([]Route{rr.routeTo(c2), rr.routeTo(c3)})
	})
	for _, r := range c2.sp.learned() {
		if r.From != rr.node.Addr {
			t.Errorf("node2 learned %v from %v, want from the reflector", r.Prefix, r.From)
		}
	}
	for _, c := range []*netNode{c2, c3} {
		if st := c.sp.states(); len(st) != 1 || st[0].Addr != rr.node.Addr || !st[0].Established {
			t.Errorf("%s sessions %+v, want exactly one, to the reflector", c.topo.Name, st)
		}
		if conns := bgpConnections(t, c.topo); len(conns) != 1 || conns[0] != rr.node.Addr.String() {
			t.Errorf("%s BGP connections %v, want only the reflector", c.topo.Name, conns)
		}
	}
}

func TestNetnsTCPMD5(t *testing.T) {
	_, nodes := newNetCluster(t, 3)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	cfg := defaultCfg()
	// node1 and node2 share a password; node3 has a wrong one for node1.
	n1.configure(t, nodes, cfg, map[netip.Addr]string{n2.node.Addr: "right", n3.node.Addr: "right"})
	n2.configure(t, nodes, cfg, map[netip.Addr]string{n1.node.Addr: "right"})
	n3.configure(t, nodes, cfg, map[netip.Addr]string{n1.node.Addr: "wrong"})
	waitFor(t, 20*time.Second, "node1-node2 with matching passwords", func() bool { return n1.sp.established(n2.node.Addr) })
	waitFor(t, 20*time.Second, "node2-node3 without passwords", func() bool { return n2.sp.established(n3.node.Addr) })
	deadline := time.Now().Add(6 * time.Second) // several connect retries of 1s
	for time.Now().Before(deadline) {
		if n1.sp.established(n3.node.Addr) || n3.sp.established(n1.node.Addr) {
			t.Fatal("node1-node3 established with mismatching TCP-MD5 passwords")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, r := range n1.sp.learned() {
		if r.Prefix == n3.node.PodCIDRs[0] && r.From == n3.node.Addr {
			t.Errorf("node1 learned %v directly from node3 without a session", r.Prefix)
		}
	}
	// Fixing the password re-forms the session without a restart.
	n3.configure(t, nodes, cfg, map[netip.Addr]string{n1.node.Addr: "right"})
	waitFor(t, 20*time.Second, "node1-node3 after the password is fixed", func() bool { return n1.sp.established(n3.node.Addr) })
}

// hasRoute reports whether a learned set holds o's pod CIDR via o.
func hasRoute(rs []Route, n, o *netNode) bool {
	for _, r := range rs {
		if r.Prefix == o.node.PodCIDRs[0] && r.NextHop == o.node.Addr {
			return true
		}
	}
	return false
}

// TestNetnsReflectorMove labels a second reflector and then removes the
// first, as an operator moves the reflector role: the sessions follow,
// every node ends with every pod CIDR, and the two clients whose sessions
// are only added or removed never lose each other's route.
func TestNetnsReflectorMove(t *testing.T) {
	_, nodes := newNetCluster(t, 4, 1)
	n1, n2, c3, c4 := nodes[0], nodes[1], nodes[2], nodes[3]
	cfg := defaultCfg()
	want := map[*netNode][]Session{}
	full := func() bool {
		for _, n := range nodes {
			st := n.sp.states()
			if len(st) != len(want[n]) {
				return false
			}
			for i, s := range st {
				if !s.Established || s.Addr != want[n][i].Peer.Addr {
					return false
				}
			}
			rs := n.sp.learned()
			for _, o := range nodes {
				if o != n && !hasRoute(rs, n, o) {
					return false
				}
			}
		}
		return true
	}
	reconfigure := func(what string, hold bool) {
		for _, n := range nodes {
			want[n] = n.configure(t, nodes, cfg, nil)
		}
		start := time.Now()
		for !full() {
			if time.Since(start) > 30*time.Second {
				t.Fatalf("%s: not converged after 30s", what)
			}
			if hold && (!hasRoute(c3.sp.learned(), c3, c4) || !hasRoute(c4.sp.learned(), c4, c3)) {
				t.Fatalf("%s: a client lost the other client's route after %v", what, time.Since(start))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("%s: converged in %v", what, time.Since(start).Round(time.Millisecond))
	}
	reconfigure("reflector node1", false)
	n2.node.RouteReflector = true
	reconfigure("reflectors node1 and node2", true)
	n1.node.RouteReflector = false
	reconfigure("reflector node2", true)
	for _, c := range []*netNode{n1, c3, c4} {
		if st := c.sp.states(); len(st) != 1 || st[0].Addr != n2.node.Addr || !st[0].Established {
			t.Errorf("%s sessions %+v, want exactly one, to node2", c.topo.Name, st)
		}
	}
}
