// Package encaptest is the privileged two-node setup that the tests of
// Weft's userspace encapsulations (udp's relay, ipip's tunnel) share: a
// node's endpoint started on its TUN with a route to the peer's pod CIDR,
// ping between pods, and the forged-packet check (from a host that is no
// node, from a node with a spoofed inner source: dropped and counted by
// the endpoint, then by the encapsulation guard in front of it). For
// tests only; it needs root.
package encaptest

import (
	"context"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
)

// Endpoint is a relay or a tunnel: Run moves packets until ctx ends.
type Endpoint interface {
	Run(ctx context.Context) error
}

// Start opens the endpoint in n's network namespace (its sockets live
// there; dev, the TUN it will own, is closed if that fails), routes
// peerCIDR through the TUN device in n, with addPodAddr also giving the
// device the node's pod CIDR network address as a /32 (as the backend
// does: the ICMP errors the node sends to remote pods then come from
// inside its pod CIDR and pass the peer's spoofing check). It runs the
// endpoint and returns it with stop, which ends it (the device and its
// routes stay) and reports its error; stop also runs at test end.
func Start[E Endpoint](t testing.TB, n *nettopo.Node, device string, peerCIDR netip.Prefix, addPodAddr bool,
	dev io.Closer, open func() (E, error)) (_ E, stop func()) {
	t.Helper()
	var e E
	if err := n.NS.Do(func(ns.NetNS) error {
		var err error
		e, err = open()
		return err
	}); err != nil {
		_ = dev.Close()
		t.Fatal(err)
	}
	l, err := n.H.LinkByName(device)
	if err != nil {
		t.Fatal(err)
	}
	if addPodAddr {
		if err := n.H.AddrReplace(l, &netlink.Addr{IPNet: IPNet(netip.PrefixFrom(n.PodCIDR.Addr(), 32))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := n.H.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: IPNet(peerCIDR)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- e.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("%s in %s: %v", device, n.Name, err)
			}
		})
	}
	t.Cleanup(stop)
	return e, stop
}

// IPNet is p as a *net.IPNet.
func IPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// Ping pings dst from n three times (0.2 s apart, 2 s timeout each).
func Ping(t *testing.T, n ns.NetNS, dst netip.Addr) error {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatalf("ping missing (make deps): %v", err)
	}
	return exec.Command("nsenter", "--net="+n.Path(), "ping", "-c", "3", "-i", "0.2", "-W", "2", dst.String()).Run()
}

// Forgery is the forged-packet check between two nodes: Node's endpoint
// knows Peer; To is a pod on Node listening on UDP 9000, From one on Peer.
type Forgery struct {
	Node, Peer *nettopo.Node
	From, To   *nettopo.Pod
	// Send sends three packets from a host that is no node and three from
	// Peer with an inner source outside its pod CIDR, all to To:9000 with
	// a payload starting "forged".
	Send func()
	// Drops returns the endpoint's drop counters by label.
	Drops func() map[string]uint64
	// Encap is the guard's encapsulation (encapguard.UDP, IPIP).
	Encap encapguard.Encap
}

// Check runs the forgery twice: first the endpoint alone drops and counts
// every packet (unknown-sender 3, spoofed-source 3) and none reaches the
// pod; then with the encapsulation guard on Node in front, the guard
// drops and counts them (the endpoint's counters do not move) and the
// pods still reach each other.
func (f Forgery) Check(t *testing.T) {
	t.Helper()
	seen := testutil.ListenUDP(t, f.To.NS, 9000)
	f.Send()
	testutil.Eventually(t, "endpoint drop counters", func() bool {
		d := f.Drops()
		return d["unknown-sender"] == 3 && d["spoofed-source"] == 3
	})
	if seen.Await("forged", 300*time.Millisecond) {
		t.Fatalf("a forged packet reached the pod: %v", seen.Received("forged"))
	}

	ctx := context.Background()
	mode, err := iptables.Detect(ctx, f.Node.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	g := encapguard.NewIPTables(iptables.Runner{Mode: mode, NetNS: f.Node.NS.Path()})
	spec := encapguard.Spec{Encap: f.Encap, PodIface: encapguard.DefaultPodIface,
		Peers: []encapguard.Peer{{Name: f.Peer.Name, UnderlayIP: f.Peer.UnderlayIP, PodCIDRs: []netip.Prefix{f.Peer.PodCIDR}}}}
	if _, err := g.Apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	f.Send()
	testutil.Eventually(t, "guard drop counters", func() bool {
		d, err := g.Drops(ctx, f.Encap.Kind)
		return err == nil && d[encapguard.ReasonUnknownSender] == 3 && d[encapguard.ReasonForgedInner] == 3
	})
	if d := f.Drops(); d["unknown-sender"] != 3 || d["spoofed-source"] != 3 || seen.Await("forged", 300*time.Millisecond) {
		t.Fatalf("forged packets passed the guard: endpoint drops %v", d)
	}
	if err := Ping(t, f.From.NS, f.To.IP); err != nil {
		t.Fatalf("ping through the guard: %v", err)
	}
}
