package bgp

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func testLogger() *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("WEFT_BGP_DEBUG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

type loopSpeaker struct {
	*GoBGP
	node Node
}

const loopPort = 11790

// loopbackSpeakers starts one speaker per node on 127.0.0.x (rootless: an
// unprivileged port), in a full mesh, each advertising its pod CIDR.
func loopbackSpeakers(t *testing.T, ctx context.Context, n int) []loopSpeaker {
	var out []loopSpeaker
	nodes := testNodes(n)
	for i := range nodes {
		nodes[i].Addr = netip.AddrFrom4([4]byte{127, 0, 0, byte(100 + i)})
	}
	for _, nd := range nodes {
		g := NewGoBGP(testLogger())
		cfg := Config{RouterID: nd.Addr, ASN: nd.ASN, ListenAddr: nd.Addr, ListenPort: loopPort,
			ConnectRetry: time.Second, GracefulRestart: 30 * time.Second}
		if err := g.Start(ctx, cfg); err != nil {
			t.Fatalf("start %s: %v", nd.Name, err)
		}
		t.Cleanup(func() { _ = g.Stop(context.Background()) })
		out = append(out, loopSpeaker{g, nd})
	}
	for _, s := range out {
		sessions := Sessions(s.node, nodes, defaultCfg(), nil)
		var peers []Peer
		for _, ss := range sessions {
			ss.Peer.Port = loopPort
			peers = append(peers, ss.Peer)
		}
		s.SetImportPolicy(PolicyFor(s.node, nodes, sessions))
		if err := s.SetPeers(ctx, peers); err != nil {
			t.Fatal(err)
		}
		if err := s.Advertise(ctx, s.node.PodCIDRs); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

func routesString(rs []Route) string {
	var b []string
	for _, r := range rs {
		b = append(b, r.Prefix.String()+"via"+r.NextHop.String())
	}
	return strings.Join(b, " ")
}

func TestSpeakerLoopbackMesh(t *testing.T) {
	ctx := context.Background()
	sp := loopbackSpeakers(t, ctx, 3)
	want := func(i int) string {
		var rs []Route
		for j, o := range sp {
			if j != i {
				rs = append(rs, Route{Prefix: o.node.PodCIDRs[0], NextHop: o.node.Addr})
			}
		}
		return routesString(rs)
	}
	for i, s := range sp {
		waitFor(t, 20*time.Second, fmt.Sprintf("%s learns the others' CIDRs", s.node.Name), func() bool {
			return routesString(s.Learned()) == want(i)
		})
		st, err := s.PeerStates(ctx)
		if err != nil || len(st) != 2 || !st[0].Established || !st[1].Established {
			t.Errorf("%s peer states %+v %v", s.node.Name, st, err)
		}
	}
	// Withdrawing a prefix and advertising a new one converges the peers.
	moved := netip.MustParsePrefix("10.244.99.0/24")
	if err := sp[0].Advertise(ctx, []netip.Prefix{moved}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n2 sees n1's new CIDR rejected and the old one gone", func() bool {
		rej, _ := sp[1].Rejected()
		return routesString(sp[1].Learned()) == routesString([]Route{{Prefix: sp[2].node.PodCIDRs[0], NextHop: sp[2].node.Addr}}) &&
			len(rej) == 1 && rej[0].Prefix == moved && rej[0].Reason == RejectNotPodCIDR
	})
	// Removing a peer drops its session and its routes.
	if err := sp[1].SetPeers(ctx, []Peer{{Addr: sp[0].node.Addr, ASN: 64512, Port: loopPort}}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "n2 forgets n3", func() bool { return len(sp[1].Learned()) == 0 })
	st, _ := sp[1].PeerStates(ctx)
	if len(st) != 1 || st[0].Addr != sp[0].node.Addr {
		t.Errorf("after removal: %+v", st)
	}
}

// goroutineDump returns the number of goroutines and all their stacks.
func goroutineDump() (int, string) {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	return runtime.NumGoroutine(), string(buf)
}

func TestSpeakerStopLeaksNoGoroutines(t *testing.T) {
	ctx := context.Background()
	base, baseDump := goroutineDump()
	baseLoops := strings.Count(baseDump, "(*BgpServer).Serve(")
	a, b := NewGoBGP(testLogger()), NewGoBGP(testLogger())
	addrA, addrB := netip.MustParseAddr("127.0.0.110"), netip.MustParseAddr("127.0.0.111")
	cycle := func() {
		for _, x := range []struct {
			g          *GoBGP
			self, peer netip.Addr
			pfx        string
		}{{a, addrA, addrB, "10.244.1.0/24"}, {b, addrB, addrA, "10.244.2.0/24"}} {
			if err := x.g.Start(ctx, Config{RouterID: x.self, ASN: 64512, ListenAddr: x.self, ListenPort: loopPort, ConnectRetry: time.Second}); err != nil {
				t.Fatal(err)
			}
			x.g.SetImportPolicy(ImportPolicy{Local: x.self, Cluster: map[netip.Addr]bool{addrA: true, addrB: true},
				Owners: map[netip.Prefix]netip.Addr{netip.MustParsePrefix("10.244.1.0/24"): addrA, netip.MustParsePrefix("10.244.2.0/24"): addrB}})
			if err := x.g.SetPeers(ctx, []Peer{{Addr: x.peer, ASN: 64512, Port: loopPort}}); err != nil {
				t.Fatal(err)
			}
			if err := x.g.Advertise(ctx, []netip.Prefix{netip.MustParsePrefix(x.pfx)}); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 20*time.Second, "a learns b's CIDR", func() bool { return len(a.Learned()) == 1 })
		for _, g := range []*GoBGP{a, b} {
			if err := g.Stop(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	// After a Stop only GoBGP's server loop (one per GoBGP value) may stay.
	settled := func(limit int) (int, string) {
		var n int
		var dump string
		for range 100 {
			if n, dump = goroutineDump(); n <= limit {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		return n, dump
	}
	for i := range 3 {
		cycle()
		n, dump := settled(base + 2)
		if n > base+2 {
			t.Fatalf("cycle %d: %d goroutines after Stop, want at most %d (base %d + 2 server loops):\n%s", i, n, base+2, base, dump)
		}
		if got := strings.Count(dump, "(*BgpServer).Serve(") - baseLoops; got != 2 {
			t.Errorf("cycle %d: %d GoBGP server loops, want 2 (reused)", i, got)
		}
	}
}
