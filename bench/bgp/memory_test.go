package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"testing"
	"time"

	"github.com/weftnet/weft/bgp"
)

// memResult is the child's heap before and after the receiving backend
// learned and installed the routes.
type memResult struct {
	Routes        int
	Before, After uint64
	Learn         time.Duration
}

func BenchmarkMemory(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		var r memResult
		inNetNS(b, fmt.Sprintf("mem:%d", n), &r)
		per := float64(int64(r.After)-int64(r.Before)) / float64(r.Routes) * 1000
		b.Logf("%d routes: heap %.1f MiB -> %.1f MiB, %.0f KiB per 1,000 learned routes; learned and installed in %v",
			r.Routes, float64(r.Before)/(1<<20), float64(r.After)/(1<<20), per/1024, r.Learn.Round(time.Millisecond))
		b.ReportMetric(per/1024, fmt.Sprintf("KiB-per-1000-routes@%d", n))
	}
}

// memory runs in the child: a sender (a bare GoBGP, AS 65000) advertises n
// prefixes; the receiver is a whole bgp backend with the sender as an
// external peer whose acceptedPrefixes cover them all (/32s inside
// 10.100.0.0/14: the size of a path does not depend on its length). The heap is read
// (after a GC) with both running and the sender's prefixes in its RIB but
// no session yet, and again when the receiver has learned and installed
// every route: the difference is the receiver's cost (GoBGP's RIB, the
// import view, the route writer's set and the in-memory kernel table) plus
// whatever the sender keeps per peer.
func memory(n int) (memResult, error) {
	ctx := context.Background()
	res := memResult{Routes: n}
	rx, tx := netip.MustParseAddr("127.0.1.1"), netip.MustParseAddr("127.0.1.2")
	sender := bgp.NewGoBGP(quiet())
	if err := sender.Start(ctx, bgp.Config{RouterID: tx, ASN: 65000, ListenAddr: tx, ConnectRetry: time.Second}); err != nil {
		return res, err
	}
	var prefixes []netip.Prefix
	for i := range n {
		prefixes = append(prefixes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}), 32).Masked())
	}
	if err := sender.Advertise(ctx, prefixes); err != nil {
		return res, err
	}
	sec := fmt.Sprintf(`{"type":"bgp","ipipMode":"Never","peers":[{"peerIP":%q,"asNumber":65000,"acceptedPrefixes":["10.100.0.0/14"]}]}`, tx)
	node, err := startNode(ctx, sec, simPeer("rx", rx, "10.244.1.0/24", false))
	if err != nil {
		return res, err
	}
	res.Before = heap()
	start := time.Now()
	if err := sender.SetPeers(ctx, []bgp.Peer{{Addr: rx, ASN: bgp.DefaultASN, External: true}}); err != nil {
		return res, err
	}
	if err := node.apply(ctx, nil); err != nil {
		return res, err
	}
	if err := waitUntil(2*time.Minute, "every route installed", func() bool {
		return len(node.k.Routes()) == n
	}); err != nil {
		return res, err
	}
	res.Learn = time.Since(start)
	res.After = heap()
	return res, nil
}

func heap() uint64 {
	var m runtime.MemStats
	for range 3 {
		runtime.GC()
	}
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
