package bgp

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"runtime/pprof"
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
		ns := newLoopbackNS(b)
		stop := startChild(b, ns, fmt.Sprintf("send:%d", n))
		runChildIn(b, ns, fmt.Sprintf("mem:%d", n), &r)
		stop()
		per := float64(int64(r.After)-int64(r.Before)) / float64(r.Routes) * 1000
		b.Logf("%d routes: receiver heap %.1f MiB -> %.1f MiB, %.0f KiB per 1,000 learned routes; learned and installed in %v",
			r.Routes, float64(r.Before)/(1<<20), float64(r.After)/(1<<20), per/1024, r.Learn.Round(time.Millisecond))
		b.ReportMetric(per/1024, fmt.Sprintf("KiB-per-1000-routes@%d", n))
	}
}

var (
	rxAddr = netip.MustParseAddr("127.0.1.1")
	txAddr = netip.MustParseAddr("127.0.1.2")
)

// send runs in a child of its own: a bare GoBGP (AS 65000) advertising n
// prefixes (/32s inside 10.100.0.0/14: the size of a path does not depend
// on its length) to the receiver, until its stdin closes.
func send(n int) (any, error) {
	ctx := context.Background()
	sender := bgp.NewGoBGP(quiet())
	if err := sender.Start(ctx, bgp.Config{RouterID: txAddr, ASN: 65000, ListenAddr: txAddr, ConnectRetry: time.Second}); err != nil {
		return nil, err
	}
	var prefixes []netip.Prefix
	for i := range n {
		prefixes = append(prefixes, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}), 32))
	}
	if err := sender.Advertise(ctx, prefixes); err != nil {
		return nil, err
	}
	if err := sender.SetPeers(ctx, []bgp.Peer{{Addr: rxAddr, ASN: bgp.DefaultASN, External: true}}); err != nil {
		return nil, err
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil, nil
}

// memory runs in the receiver's child: a whole bgp backend with the sender
// as an external peer whose acceptedPrefixes cover all its prefixes. The
// heap is read (after a GC) once the backend runs without sessions, and
// again when it has learned and installed every route: the difference is
// what the routes cost one node (GoBGP's RIB, the import view, the route
// writer's set and the in-memory kernel table).
func memory(n int) (memResult, error) {
	ctx := context.Background()
	res := memResult{Routes: n}
	sec := fmt.Sprintf(`{"type":"bgp","ipipMode":"Never","peers":[{"peerIP":%q,"asNumber":65000,"acceptedPrefixes":["10.100.0.0/14"]}]}`, txAddr)
	node, err := startNode(ctx, sec, simPeer("rx", rxAddr, "10.244.1.0/24", false))
	if err != nil {
		return res, err
	}
	res.Before = heap()
	start := time.Now()
	if err := node.apply(ctx, nil); err != nil {
		return res, err
	}
	if err := waitUntil(2*time.Minute, "every route installed", func() bool {
		return len(node.k.Routes()) == n
	}); err != nil {
		return res, err
	}
	res.Learn = time.Since(start)
	time.Sleep(time.Second) // a RIB read still under way is not the routes' cost
	res.After = heap()
	if path := os.Getenv("WEFT_BENCH_HEAPPROFILE"); path != "" {
		f, err := os.Create(fmt.Sprintf("%s.%d", path, n))
		if err != nil {
			return res, err
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			return res, err
		}
	}
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
