package e2e

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/internal/testutil"
)

// routeWatch samples, every 100 ms, the route each watcher node has to
// one node's pod CIDR, and the router's path for it.
type routeWatch struct {
	mu      sync.Mutex
	samples int
	missing []string // first few samples where a route was not as wanted
	stop    chan struct{}
	done    chan struct{}
}

func (tp *topo) watchRoute(ctx context.Context, target *corev1.Node) *routeWatch {
	w := &routeWatch{stop: make(chan struct{}), done: make(chan struct{})}
	cidr := target.Annotations[annoPodCIDR]
	proto := strings.TrimPrefix(target.Name, "wl-")
	go func() {
		defer close(w.done)
		for {
			var bad []string
			for _, n := range others(tp.nodes, target.Name) {
				got, err := nodeRoutes(n.Name, true)
				if err != nil || got[cidr] != wantRoute(n, target) {
					bad = append(bad, fmt.Sprintf("%s: %q %v", n.Name, got[cidr], err))
				}
			}
			if out, err := birdc(ctx, "bird", "show", "route", "for", cidr); err != nil || !strings.Contains(out, "unicast ["+proto+" ") {
				bad = append(bad, fmt.Sprintf("bird: %v %q", err, out))
			}
			w.mu.Lock()
			w.samples++
			if len(bad) > 0 && len(w.missing) < 5 {
				w.missing = append(w.missing, time.Now().Format("15:04:05.000")+" "+strings.Join(bad, "; "))
			}
			w.mu.Unlock()
			select {
			case <-w.stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	return w
}

func (w *routeWatch) end() (int, []string) {
	close(w.stop)
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.samples, w.missing
}

// nodeRoutes is node's main table as destination -> "via GW" or "dev
// DEV": Weft's routes (proto 87) only when own is set, else all.
func nodeRoutes(node string, own bool) (map[string]string, error) {
	nsh, err := vns.GetFromPath(filepath.Join("/run/netns", node))
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("%s: routes: %w", node, err)
	}
	got := map[string]string{}
	for _, r := range rs {
		if own && int(r.Protocol) != weftRtProto {
			continue
		}
		dst := "0.0.0.0/0"
		if r.Dst != nil {
			dst = r.Dst.String()
		}
		switch l, err := h.LinkByIndex(r.LinkIndex); {
		case err != nil:
			got[dst] = err.Error()
		case r.Gw != nil:
			got[dst] = "via " + r.Gw.String()
		default:
			got[dst] = "dev " + l.Attrs().Name
		}
	}
	return got, nil
}

// checkRestart kills weftd on node 2 during a stream to a pod on node 3
// (same subnet): the stream carries data every second, and the other
// nodes and the router keep node 2's pod CIDR routed the whole time, until
// the new weftd has its sessions back (graceful restart: no withdrawal).
// A stream to node 4 (across the router, IP-in-IP) must survive too; its
// pause is reported.
func (tp *topo) checkRestart(t *testing.T, ctx context.Context) {
	victim := tp.nodes[1]
	p := pair{tp.pods[victim.Name], tp.pods[tp.nodes[2].Name]}
	w := tp.watchRoute(ctx, victim)
	// A second stream crosses the router: userspace IP-in-IP, which runs
	// inside weftd, so it pauses while weftd restarts (measured).
	across := pair{tp.pods[victim.Name], tp.pods[tp.nodes[3].Name]}
	waitAcross := startStream(t, ctx, across, 5300, streamSecs)
	start := time.Now()
	oldPID, intervals := streamWithKill(t, ctx, p, streamSecs)
	for i, b := range intervals {
		if b == 0 {
			t.Errorf("second %d of the stream carried nothing", i+1)
		}
	}
	if iv, err := waitAcross(); err != nil {
		t.Errorf("stream %s -> %s across the router: %v", across.from.Name, across.to.Name, err)
	} else {
		t.Logf("stream %s -> %s across the router (userspace IP-in-IP) survived; seconds without data: %d of %d",
			across.from.Name, across.to.Name, zeros(iv), len(iv))
	}
	if err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		pid, err := weftdPID(victim.Name)
		if err != nil || pid == oldPID {
			return false, fmt.Errorf("weftd not restarted: %v", err)
		}
		return true, tp.clusterSessions(victim, others(tp.nodes, victim.Name))
	}); err != nil {
		w.end()
		t.Fatal(err)
	}
	back := time.Since(start)
	time.Sleep(2 * time.Second)
	samples, missing := w.end()
	for _, m := range missing {
		t.Errorf("route to %s's pod CIDR withdrawn or changed: %s", victim.Name, m)
	}
	t.Logf("weftd on %s killed during the stream; sessions back after %s; %d route samples on 4 nodes and bird, none missing: %v",
		victim.Name, back.Round(time.Millisecond), samples, len(missing) == 0)
}

func zeros(iv []int64) int {
	n := 0
	for _, b := range iv {
		if b == 0 {
			n++
		}
	}
	return n
}

// pinger pings from one pod to another every 200 ms until stopped.
type pinger struct {
	p    pair
	cmd  *exec.Cmd
	seqs []int
	sent int
	done chan struct{}
}

var (
	icmpSeq  = regexp.MustCompile(`icmp_seq=(\d+)`)
	pingSent = regexp.MustCompile(`(\d+) packets transmitted`)
)

const pingInterval = 200 * time.Millisecond

func startPinger(t *testing.T, ctx context.Context, p pair) *pinger {
	t.Helper()
	root, cache := testutil.RepoRoot(), filepath.Join(testutil.RepoRoot(), ".localcluster", "bin")
	if v := os.Getenv("WEFT_CLUSTER_BIN"); v != "" {
		cache = v
	}
	pg := &pinger{p: p, done: make(chan struct{})}
	pg.cmd = exec.CommandContext(ctx, filepath.Join(cache, "localcluster"), "--root", root, "--bin", cache,
		"exec", p.from.Namespace+"/"+p.from.Name, "--", "ping", "-n", "-i", "0.2", "-W", "1", p.to.Status.PodIP)
	out, err := pg.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := pg.cmd.Start(); err != nil {
		t.Fatalf("ping: %v", err)
	}
	go func() {
		defer close(pg.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if m := icmpSeq.FindStringSubmatch(sc.Text()); m != nil && strings.Contains(sc.Text(), "bytes from") {
				n, _ := strconv.Atoi(m[1])
				pg.seqs = append(pg.seqs, n)
			} else if m := pingSent.FindStringSubmatch(sc.Text()); m != nil {
				pg.sent, _ = strconv.Atoi(m[1])
			}
		}
	}()
	return pg
}

// stop ends the ping and returns the longest run without a reply (at the
// start, between replies or at the end) and the replies.
func (pg *pinger) stop() (time.Duration, int) {
	_ = pg.cmd.Process.Signal(syscall.SIGINT)
	<-pg.done
	_ = pg.cmd.Wait()
	longest, last := 0, 0
	for _, s := range pg.seqs {
		longest = max(longest, s-last-1)
		last = s
	}
	longest = max(longest, pg.sent-last)
	return time.Duration(longest) * pingInterval, len(pg.seqs)
}

// checkReflectorMove: node 1 reflects, the four others are its clients
// with exactly one cluster session each, every node routes every pod CIDR
// and the pairs answer; then node 2 is labelled a reflector and node 1's
// label removed, while every pair pings every 200 ms: the sessions move
// to node 2 without a weftd restart; the longest gap in each pair's
// replies is measured and bounded.
func (tp *topo) checkReflectorMove(t *testing.T, ctx context.Context) {
	n1, n2 := tp.nodes[0], tp.nodes[1]
	pids := map[string]int{}
	for _, n := range tp.nodes {
		pids[n.Name], _ = weftdPID(n.Name)
	}
	t.Cleanup(func() {
		setRR(context.Background(), tp.c, n1.Name, false)
		setRR(context.Background(), tp.c, n2.Name, false)
	})
	reflectors := func(rr ...*corev1.Node) func(*corev1.Node) []*corev1.Node {
		return func(n *corev1.Node) []*corev1.Node {
			for _, r := range rr {
				if r.Name == n.Name {
					return others(tp.nodes, n.Name)
				}
			}
			return rr
		}
	}
	setRR(ctx, tp.c, n1.Name, true)
	start := time.Now()
	tp.waitSessions(t, ctx, reflectors(n1), time.Minute)
	t.Logf("1 reflector (%s) + 4 clients with one session each after %s", n1.Name, time.Since(start).Round(time.Millisecond))
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) { return tp.allAnswer(ctx) }); err != nil {
		t.Fatalf("pairs after the first reflector: %v", err)
	}
	probeAll(t, ctx, tp.remote)

	var pingers []*pinger
	for _, p := range tp.remote {
		pingers = append(pingers, startPinger(t, ctx, p))
	}
	time.Sleep(2 * time.Second)
	start = time.Now()
	setRR(ctx, tp.c, n2.Name, true)
	tp.waitSessions(t, ctx, reflectors(n1, n2), time.Minute)
	setRR(ctx, tp.c, n1.Name, false)
	tp.waitSessions(t, ctx, reflectors(n2), time.Minute)
	moved := time.Since(start)
	_ = waitFor(ctx, 30*time.Second, func() (bool, error) { return tp.allAnswer(ctx) })
	time.Sleep(3 * time.Second)
	worst, gaps := stopPingers(t, pingers)
	t.Logf("reflector moved %s -> %s: sessions re-formed after %s; longest reply gap %s (%d of %d pairs had one: %v)",
		n1.Name, n2.Name, moved.Round(time.Millisecond), worst, len(gaps), len(pingers), gaps)
	// GoBGP v3 rebuilds a session whose reflector role changes, withdrawing
	// its routes (issue 10's known miss): bounded, not yet zero.
	if worst > reflectorGapBound {
		t.Errorf("a pair went %s without replies while the reflector moved (bound %s)", worst, reflectorGapBound)
	}
	probeAll(t, ctx, tp.remote)
	for _, n := range tp.nodes {
		if pid, err := weftdPID(n.Name); err != nil || pid != pids[n.Name] {
			t.Errorf("%s: weftd pid %d -> %d (%v): sessions must move without a restart", n.Name, pids[n.Name], pid, err)
		}
	}
}

// stopPingers stops them and returns the longest reply gap and each
// pair's gap that was not zero.
func stopPingers(t *testing.T, pingers []*pinger) (time.Duration, []string) {
	var worst time.Duration
	var gaps []string
	for _, pg := range pingers {
		gap, replies := pg.stop()
		worst = max(worst, gap)
		if gap > 0 {
			gaps = append(gaps, fmt.Sprintf("%s>%s:%s", pg.p.from.Name, pg.p.to.Name, gap))
		}
		if replies == 0 {
			t.Errorf("%s -> %s: no ping reply at all", pg.p.from.Name, pg.p.to.Name)
		}
	}
	return worst, gaps
}

// reflectorGapBound is the longest reply gap accepted while the reflector
// moves: the backend holds each peer's Node-implied route while GoBGP
// rebuilds the sessions (8-14 s of loss without the hold); pings run every
// 200 ms.
const reflectorGapBound = time.Second

// allAnswer reports whether every pair answers over TCP.
func (tp *topo) allAnswer(ctx context.Context) (bool, error) {
	for _, p := range tp.remote {
		if got, err := probe(ctx, p.from, p.to, tcpPort, "tcp"); err != nil || got != p.to.Name {
			return false, fmt.Errorf("%s -> %s: %q %v", p.from.Name, p.to.Name, got, err)
		}
	}
	return true, nil
}
