package udp

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/testutil"
)

// kernelNode is a node of nettopo with a udp backend on the real kernel.
type kernelNode struct {
	n *nettopo.Node
	b backend.Backend
}

// in runs fn in the node's namespace (the backend's netlink calls and the
// sockets it opens use the calling thread's).
func (k kernelNode) in(t *testing.T, fn func() error) {
	t.Helper()
	if err := k.n.NS.Do(func(ns.NetNS) error { return fn() }); err != nil {
		t.Fatal(err)
	}
}

func startKernelNode(t *testing.T, n *nettopo.Node) kernelNode {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h, err := netlinkx.NewHandleAt(n.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	f := Factory{Kernel: Netlink{Log: log}, Routes: route.New(route.NewNetlink(h), log), Guard: encapguard.NewFake(), Log: log}
	b, err := f.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	k := kernelNode{n: n, b: b}
	local := n.Local()
	local.UnderlayMTU = 1500
	life, cancel := context.WithCancel(context.Background())
	k.in(t, func() error { _, err := b.Start(life, local); return err })
	t.Cleanup(func() {
		_ = n.NS.Do(func(ns.NetNS) error { return b.Stop(context.Background(), true) })
		cancel()
	})
	return k
}

func (k kernelNode) apply(t *testing.T, peers ...*nettopo.Node) backend.ApplyResult {
	t.Helper()
	var res backend.ApplyResult
	var ps []backend.Peer
	for _, p := range peers {
		l := p.Local()
		ps = append(ps, backend.Peer{Name: l.Name, UnderlayIP: l.UnderlayIP, PodCIDRs: []netip.Prefix{l.PodCIDR}, Backends: []string{Type}})
	}
	k.in(t, func() error {
		var err error
		res, err = k.b.Apply(context.Background(), ps)
		return err
	})
	return res
}

// TestBackendKernel: two node namespaces, each with the udp backend on
// the real kernel: pods ping across; weft.udp deleted by hand is re-opened
// (with its address and routes) by the next Apply, which reports it, and
// pods ping again; Stop with cleanup removes the device and its routes.
func TestBackendKernel(t *testing.T) {
	testutil.RequireRoot(t)
	u := nettopo.NewUnderlay(t)
	n1, n2 := u.AddNode(t, 1), u.AddNode(t, 2)
	p1, p2 := n1.AddPod(t, testMTU), n2.AddPod(t, testMTU)
	k1, k2 := startKernelNode(t, n1), startKernelNode(t, n2)
	k1.apply(t, n2)
	k2.apply(t, n1)
	if err := ping(t, p1.NS, p2.IP); err != nil {
		t.Fatalf("ping pod1 -> pod2 through the udp backend: %v", err)
	}
	l, err := n2.H.LinkByName(DefaultDevice)
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.H.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if err := ping(t, p1.NS, p2.IP); err == nil {
		t.Fatal("ping crossed with node 2's weft.udp deleted")
	}
	res := k2.apply(t, n1)
	if len(res.Problems) == 0 || !strings.Contains(res.Problems[0], "re-opened") {
		t.Fatalf("apply after the device went: problems %q", res.Problems)
	}
	if err := ping(t, p1.NS, p2.IP); err != nil {
		t.Fatalf("ping after the re-open: %v", err)
	}
	k2.in(t, func() error { return k2.b.Stop(context.Background(), true) })
	if _, err := n2.H.LinkByName(DefaultDevice); err == nil {
		t.Fatal("weft.udp left after Stop with cleanup")
	}
	rs, _ := n2.H.RouteList(nil, 2)
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == n1.PodCIDR.String() {
			t.Fatalf("route %v left after Stop with cleanup", r)
		}
	}
}
