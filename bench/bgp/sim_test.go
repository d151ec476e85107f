package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/bgp"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/testutil"
)

// The simulations run in a child process inside a throwaway network
// namespace: GoBGP opens its sockets from goroutines of its own, on any
// OS thread, so the whole process must live in the namespace. Every
// speaker listens on its own loopback address there (127.0.1.x), port 179.
const childEnv = "WEFT_BENCH_BGP_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		res, err := runChild(mode)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench child:", err)
			os.Exit(1)
		}
		if res != nil {
			_ = json.NewEncoder(os.Stdout).Encode(res)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runChild(mode string) (any, error) {
	var n int
	if _, err := fmt.Sscanf(mode, "mem:%d", &n); err == nil {
		return memory(n)
	}
	if _, err := fmt.Sscanf(mode, "send:%d", &n); err == nil {
		return send(n)
	}
	if _, err := fmt.Sscanf(mode, "converge:%d", &n); err == nil {
		return converge(n)
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

// newLoopbackNS is a fresh namespace with its loopback up.
func newLoopbackNS(b *testing.B) ns.NetNS {
	n := testutil.NewNS(b)
	nettopo.Sh(b, n, "ip", "link", "set", "lo", "up")
	return n
}

func childCmd(b *testing.B, n ns.NetNS, mode string) *exec.Cmd {
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+n.Path(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+mode)
	cmd.Stderr = os.Stderr
	return cmd
}

// inNetNS runs this test binary in a fresh namespace in the given mode and
// decodes its result into out.
func inNetNS(b *testing.B, mode string, out any) {
	b.Helper()
	runChildIn(b, newLoopbackNS(b), mode, out)
}

func runChildIn(b *testing.B, n ns.NetNS, mode string, out any) {
	b.Helper()
	o, err := childCmd(b, n, mode).Output()
	if err != nil {
		b.Fatalf("%s: %v", mode, err)
	}
	if err := json.Unmarshal(o, out); err != nil {
		b.Fatalf("%s: %v: %s", mode, err, o)
	}
}

// startChild starts a child that runs until stop (its stdin closes), once
// it printed its first line.
func startChild(b *testing.B, n ns.NetNS, mode string) (stop func()) {
	b.Helper()
	cmd := childCmd(b, n, mode)
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	stop = func() { _ = in.Close(); _ = cmd.Wait() }
	b.Cleanup(func() { _ = cmd.Process.Kill(); stop() })
	if _, err := bufio.NewReader(out).ReadString('\n'); err != nil {
		b.Fatalf("%s: %v", mode, err)
	}
	return stop
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// stampKernel is an in-memory kernel table that remembers when each
// destination was first written.
type stampKernel struct {
	*route.Fake
	mu    sync.Mutex
	first map[netip.Prefix]time.Time
}

func newStampKernel() *stampKernel {
	return &stampKernel{Fake: route.NewFake(), first: map[netip.Prefix]time.Time{}}
}

func (k *stampKernel) Replace(r route.Route, owner string) error {
	k.mu.Lock()
	if _, ok := k.first[r.Dst]; !ok {
		k.first[r.Dst] = time.Now()
	}
	k.mu.Unlock()
	return k.Fake.Replace(r, owner)
}

func (k *stampKernel) installed(p netip.Prefix) (time.Time, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	t, ok := k.first[p]
	return t, ok
}

func (k *stampKernel) forget(p netip.Prefix) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.first, p)
}

// simNode is one simulated node: a whole bgp backend (its own GoBGP) over
// an in-memory kernel.
type simNode struct {
	peer backend.Peer
	k    *stampKernel
	sp   *bgp.GoBGP
	b    backend.Backend
}

func startNode(ctx context.Context, section string, p backend.Peer) (*simNode, error) {
	n := &simNode{peer: p, k: newStampKernel(), sp: bgp.NewGoBGP(quiet())}
	f := &bgp.Factory{Speaker: n.sp, Routes: route.New(n.k, quiet()), Log: quiet()}
	b, err := f.New(json.RawMessage(section))
	if err != nil {
		return nil, err
	}
	n.b = b
	_, err = b.Start(ctx, backend.LocalNode{Name: p.Name, UnderlayIP: p.UnderlayIP, UnderlayLink: "lo", UnderlayMTU: 65536,
		PodCIDR: p.PodCIDRs[0], Network: netip.MustParsePrefix("10.0.0.0/8"), Labels: p.Labels})
	return n, err
}

// apply gives n every peer but itself.
func (n *simNode) apply(ctx context.Context, all []backend.Peer) error {
	var others []backend.Peer
	for _, p := range all {
		if p.Name != n.peer.Name {
			others = append(others, p)
		}
	}
	_, err := n.b.Apply(ctx, others)
	return err
}

func simPeer(name string, addr netip.Addr, cidr string, rr bool) backend.Peer {
	p := backend.Peer{Name: name, UnderlayIP: addr, PodCIDRs: []netip.Prefix{netip.MustParsePrefix(cidr)},
		Backends: []string{bgp.Type}, Labels: map[string]string{}}
	if rr {
		p.Labels[bgp.LabelRouteReflector] = "true"
	}
	return p
}

// waitUntil polls cond every millisecond until it holds or d passes.
func waitUntil(d time.Duration, what string, cond func() bool) error {
	for deadline := time.Now().Add(d); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: not within %v", what, d)
		}
	}
	return nil
}
