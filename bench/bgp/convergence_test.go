// Package bgp benchmarks the bgp backend's control plane with whole
// backends (each its own embedded GoBGP, the import filter, the route
// writer over an in-memory kernel) simulated in one process.
// BenchmarkConvergence: 50 speakers behind 2 route reflectors; a new node
// joins and the time until its pod CIDR is written into the route table of
// every one of the 50 is measured, round after round. BenchmarkMemory: the
// heap one backend needs per 1,000 learned routes.
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/bgp/
package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/bgp"
	"github.com/weftnet/weft/internal/backend"
)

const (
	speakers   = 50 // two of them reflectors
	joinRounds = 15
	section    = `{"type":"bgp","ipipMode":"Never"}`
)

// convResult is what the child reports: per round, the time from the new
// node's Start until its first session (with either reflector) was
// established, and until its CIDR was in the table of the first and of
// the last of the 50 nodes.
type convResult struct {
	Initial     time.Duration
	Established []time.Duration
	First, Last []time.Duration
}

func BenchmarkConvergence(b *testing.B) {
	var r convResult
	inNetNS(b, fmt.Sprintf("converge:%d", joinRounds), &r)
	ms := func(ds []time.Duration, q float64) float64 {
		s := slices.Clone(ds)
		slices.Sort(s)
		return float64(s[int(q*float64(len(s)-1)+0.5)]) / 1e6
	}
	b.Logf("initial convergence of %d speakers (every node has all %d routes): %v", speakers, speakers-1, r.Initial.Round(time.Millisecond))
	for i := range r.Last {
		b.Logf("join %2d: first session established %7.1f ms, CIDR on the first node %7.1f ms, on all %d nodes %7.1f ms", i+1,
			float64(r.Established[i])/1e6, float64(r.First[i])/1e6, speakers, float64(r.Last[i])/1e6)
	}
	b.ReportMetric(ms(r.Last, 0.5), "join-all-p50-ms")
	b.ReportMetric(ms(r.Last, 0.9), "join-all-p90-ms")
	b.ReportMetric(ms(r.Established, 0.5), "join-first-session-p50-ms")
	var prop []time.Duration
	for i := range r.Last {
		prop = append(prop, r.Last[i]-r.Established[i])
	}
	b.ReportMetric(ms(prop, 0.5), "established-to-all-p50-ms")
	b.ReportMetric(ms(prop, 0.9), "established-to-all-p90-ms")
}

// converge runs in the child: 2 reflectors and 48 clients converge, then
// rounds new nodes join one after the other (each leaves before the next).
// A join is what weftd does: the new node starts its backend and applies
// the peers it sees; every other node applies the peer list with the new
// node in it (the reflectors first; in a cluster each node does it on its
// own when the Node update reaches it).
func converge(rounds int) (convResult, error) {
	ctx := context.Background()
	var res convResult
	var peers []backend.Peer
	for i := 1; i <= speakers; i++ {
		peers = append(peers, simPeer(fmt.Sprintf("node%d", i), netip.AddrFrom4([4]byte{127, 0, 1, byte(i)}),
			fmt.Sprintf("10.244.%d.0/24", i), i <= 2))
	}
	start := time.Now()
	var nodes []*simNode
	for _, p := range peers {
		n, err := startNode(ctx, section, p)
		if err != nil {
			return res, err
		}
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		if err := n.apply(ctx, peers); err != nil {
			return res, err
		}
	}
	if err := waitUntil(2*time.Minute, "initial convergence", func() bool {
		for _, n := range nodes {
			if len(n.sp.Learned()) != speakers-1 {
				return false
			}
		}
		return true
	}); err != nil {
		return res, err
	}
	res.Initial = time.Since(start)
	for j := 1; j <= rounds; j++ {
		est, first, last, err := join(ctx, nodes, peers, j)
		if err != nil {
			return res, err
		}
		res.Established, res.First, res.Last = append(res.Established, est), append(res.First, first), append(res.Last, last)
	}
	return res, nil
}

// join adds node j (127.0.2.j, 10.245.j.0/24), measures, and removes it.
func join(ctx context.Context, nodes []*simNode, peers []backend.Peer, j int) (est, first, last time.Duration, err error) {
	np := simPeer(fmt.Sprintf("new%d", j), netip.AddrFrom4([4]byte{127, 0, 2, byte(j)}), fmt.Sprintf("10.245.%d.0/24", j), false)
	cidr := np.PodCIDRs[0]
	all := append(slices.Clone(peers), np)
	t0 := time.Now()
	nn, err := startNode(ctx, section, np)
	if err != nil {
		return 0, 0, 0, err
	}
	defer func() { _ = nn.b.Stop(ctx, true) }()
	if err := nn.apply(ctx, all); err != nil {
		return 0, 0, 0, err
	}
	for _, n := range nodes {
		if err := n.apply(ctx, all); err != nil {
			return 0, 0, 0, err
		}
	}
	if err := waitUntil(30*time.Second, "a session of the new node", func() bool {
		st, _ := nn.sp.PeerStates(ctx)
		return slices.ContainsFunc(st, func(s bgp.PeerState) bool { return s.Established })
	}); err != nil {
		return 0, 0, 0, err
	}
	est = time.Since(t0)
	var stamps []time.Time
	if err := waitUntil(30*time.Second, "the new CIDR on every node", func() bool {
		stamps = stamps[:0]
		for _, n := range nodes {
			t, ok := n.k.installed(cidr)
			if !ok {
				return false
			}
			stamps = append(stamps, t)
		}
		return true
	}); err != nil {
		return 0, 0, 0, err
	}
	slices.SortFunc(stamps, func(a, b time.Time) int { return a.Compare(b) })
	first, last = stamps[0].Sub(t0), stamps[len(stamps)-1].Sub(t0)
	// The node leaves: the others drop it from their peers first.
	for _, n := range nodes {
		if err := n.apply(ctx, peers); err != nil {
			return 0, 0, 0, err
		}
		n.k.forget(cidr)
	}
	return est, first, last, nil
}
