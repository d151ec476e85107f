package bgp

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/route"
)

// helperBackend is a whole bgp backend (GoBGP, the node's kernel routes)
// in a speaker helper process, as weftd runs it on a node.
type helperBackend struct {
	b backend.Backend
}

func (h *helperBackend) op(ctx context.Context, g *GoBGP, c helperCmd) (helperResp, error) {
	var r helperResp
	switch c.Op {
	case "bstart":
		nh, err := netlinkx.NewHandle()
		if err != nil {
			return r, err
		}
		f := &Factory{Speaker: g, Routes: route.New(route.NewNetlink(nh), testLogger()), Log: testLogger()}
		if h.b, err = f.New(c.Section); err != nil {
			return r, err
		}
		_, err = h.b.Start(ctx, *c.Local)
		return r, err
	case "blocal":
		h.b.(backend.LocalUpdater).UpdateLocal(*c.Local)
		return r, nil
	case "bapply":
		_, err := h.b.Apply(ctx, c.Nodes)
		return r, err
	case "bstop":
		return r, h.b.Stop(ctx, true)
	}
	return r, fmt.Errorf("unknown op %q", c.Op)
}

// backendNode is one node of TestNetnsReflectorMoveHitless: a namespace
// with a pod, and a bgp backend in a helper process.
type backendNode struct {
	topo  *nettopo.Node
	pod   *nettopo.Pod
	sp    *speakerProc
	rr    bool
	local backend.LocalNode
}

func (n *backendNode) asPeer() backend.Peer {
	p := backend.Peer{Name: n.topo.Name, UnderlayIP: n.topo.UnderlayIP, PodCIDRs: []netip.Prefix{n.topo.PodCIDR},
		Backends: []string{Type}, Labels: map[string]string{}}
	if n.rr {
		p.Labels[LabelRouteReflector] = "true"
	}
	return p
}

// TestNetnsReflectorMoveHitless runs the bgp backend on four nodes with
// one reflector (node1), labels a second (node2) and removes the first,
// as an operator moves the role, while every pair of pods exchanges a UDP
// probe every 10 ms. GoBGP re-forms the sessions whose reflector role
// changes (their routes are withdrawn and learned again), yet no probe may
// go unanswered: the nodes keep each peer's route while the topology
// re-learns it. The sessions end where the new topology puts them.
func TestNetnsReflectorMoveHitless(t *testing.T) {
	section := json.RawMessage(`{"type":"bgp","ipipMode":"Never"}`)
	cfg, err := DecodeConfig(section)
	if err != nil {
		t.Fatal(err)
	}
	u := nettopo.NewUnderlay(t)
	var nodes []*backendNode
	for i := 1; i <= 4; i++ {
		tn := u.AddNode(t, i)
		n := &backendNode{topo: tn, pod: tn.AddPod(t, 1500), rr: i == 1, sp: startSpeakerProc(t, tn.NS)}
		n.local = tn.Local()
		n.local.UnderlayMTU = 1500
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		n.setLocal(t, "bstart", section)
	}
	apply := func(what string) {
		for _, n := range nodes {
			n.setLocal(t, "blocal", nil)
			var peers []backend.Peer
			for _, o := range nodes {
				if o != n {
					peers = append(peers, o.asPeer())
				}
			}
			n.sp.must(helperCmd{Op: "bapply", Nodes: peers})
		}
		start := time.Now()
		waitFor(t, 60*time.Second, what+": sessions and routes converge", func() bool { return converged(t, nodes, cfg) })
		t.Logf("%s: converged in %v", what, time.Since(start).Round(time.Millisecond))
	}
	apply("reflector node1")
	probes := startProbes(t, nodes)
	nodes[1].rr = true
	apply("reflectors node1 and node2")
	nodes[0].rr = false
	apply("reflector node2")
	time.Sleep(time.Second)
	for _, p := range probes.stop() {
		t.Logf("%s: %d probes sent, %d answered, longest gap between answered probes %v", p.name, p.sent, p.answered, p.gap.Round(time.Millisecond))
		if p.answered < p.sent || p.sent < 100 {
			t.Errorf("%s: %d of %d probes unanswered during the reflector move (longest gap %v)",
				p.name, p.sent-p.answered, p.sent, p.gap.Round(time.Millisecond))
		}
	}
	for _, n := range []*backendNode{nodes[0], nodes[2], nodes[3]} {
		if st := n.sp.states(); len(st) != 1 || st[0].Addr != nodes[1].topo.UnderlayIP || !st[0].Established {
			t.Errorf("%s sessions %+v, want exactly one, to node2", n.topo.Name, st)
		}
	}
}

func (n *backendNode) setLocal(t *testing.T, op string, section json.RawMessage) {
	t.Helper()
	l := n.local
	l.Labels = n.asPeer().Labels
	n.sp.must(helperCmd{Op: op, Section: section, Local: &l})
}

// converged: every node has exactly the sessions the topology computes,
// established, and has learned every other node's pod CIDR.
func converged(t *testing.T, nodes []*backendNode, cfg BackendConfig) bool {
	var all []Node
	for _, n := range nodes {
		all = append(all, Node{Name: n.topo.Name, Addr: n.topo.UnderlayIP, ASN: cfg.ASN, RouteReflector: n.rr})
	}
	for i, n := range nodes {
		want := Sessions(all[i], all, cfg, nil)
		st := n.sp.states()
		if len(st) != len(want) {
			return false
		}
		for j, s := range st {
			if !s.Established || s.Addr != want[j].Peer.Addr {
				return false
			}
		}
		if len(n.sp.learned()) != len(nodes)-1 {
			return false
		}
	}
	return true
}

// probe is one pod pair's UDP echo probe.
type probe struct {
	name           string
	sent, answered int
	gap            time.Duration
}

type probeSet struct {
	stopc chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	res   []probe
}

// startProbes runs an echo server in every pod and, for every pair of
// pods, a client sending a probe every 10 ms.
func startProbes(t *testing.T, nodes []*backendNode) *probeSet {
	ps := &probeSet{stopc: make(chan struct{})}
	for _, n := range nodes {
		c := listenIn(t, n.pod.NS, netip.AddrPortFrom(n.pod.IP, 7200))
		go func() {
			buf := make([]byte, 64)
			for {
				k, from, err := c.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = c.WriteTo(buf[:k], from)
			}
		}()
	}
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			c := listenIn(t, a.pod.NS, netip.AddrPortFrom(a.pod.IP, 0))
			ps.wg.Add(1)
			go ps.run(c, a.topo.Name+"->"+b.topo.Name, net.UDPAddrFromAddrPort(netip.AddrPortFrom(b.pod.IP, 7200)))
		}
	}
	return ps
}

func listenIn(t *testing.T, n ns.NetNS, at netip.AddrPort) net.PacketConn {
	t.Helper()
	var c net.PacketConn
	if err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = net.ListenPacket("udp4", at.String())
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// run sends numbered probes until stop, then waits half a second for the
// last answers; gap is the longest time between two answered probes'
// sending.
func (ps *probeSet) run(c net.PacketConn, name string, to net.Addr) {
	defer ps.wg.Done()
	var mu sync.Mutex
	sentAt := map[uint32]time.Time{}
	answered := map[uint32]bool{}
	go func() {
		buf := make([]byte, 64)
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			if k >= 4 {
				mu.Lock()
				answered[uint32(buf[0])<<24|uint32(buf[1])<<16|uint32(buf[2])<<8|uint32(buf[3])] = true
				mu.Unlock()
			}
		}
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	var seq uint32
	for done := false; !done; {
		select {
		case <-ps.stopc:
			done = true
		case <-tick.C:
			mu.Lock()
			sentAt[seq] = time.Now()
			mu.Unlock()
			_, _ = c.WriteTo([]byte{byte(seq >> 24), byte(seq >> 16), byte(seq >> 8), byte(seq)}, to)
			seq++
		}
	}
	time.Sleep(500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	p := probe{name: name, sent: int(seq)}
	var last time.Time
	for i := uint32(0); i < seq; i++ {
		if !answered[i] {
			continue
		}
		p.answered++
		if !last.IsZero() && sentAt[i].Sub(last) > p.gap {
			p.gap = sentAt[i].Sub(last)
		}
		last = sentAt[i]
	}
	ps.mu.Lock()
	ps.res = append(ps.res, p)
	ps.mu.Unlock()
}

func (ps *probeSet) stop() []probe {
	close(ps.stopc)
	ps.wg.Wait()
	return ps.res
}
