package udp

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/tun"
)

const testMTU = 1500 - Overhead

// startNode opens (or adopts) weft.udp in the node, starts a relay on port
// 8285 in its namespace and routes peerCIDR through the TUN. The returned
// stop ends the relay (the device and its routes stay); it also runs at
// test end.
func startNode(t testing.TB, n *nettopo.Node, peerCIDR netip.Prefix, bind func() conn.Bind) (*Relay, func()) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dev, err := tun.Open(tun.Options{Name: DefaultDevice, MTU: testMTU, NetNS: n.NS.Path(), Log: log})
	if err != nil {
		t.Fatal(err)
	}
	var r *Relay
	if err := n.NS.Do(func(ns.NetNS) error { // the sockets live in the node
		var err error
		r, err = NewRelay(Options{Device: dev, Bind: bind(), Port: DefaultPort, Log: log})
		return err
	}); err != nil {
		_ = dev.Close()
		t.Fatal(err)
	}
	l, err := n.H.LinkByName(DefaultDevice)
	if err != nil {
		t.Fatal(err)
	}
	// The node's pod CIDR address on the TUN (as the backend gives it): the
	// ICMP errors the node sends to remote pods then come from inside its
	// pod CIDR and pass the peer's spoofing check.
	if err := n.H.AddrReplace(l, &netlink.Addr{IPNet: ipnet(netip.PrefixFrom(n.PodCIDR.Addr(), 32))}); err != nil {
		t.Fatal(err)
	}
	if err := n.H.RouteReplace(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipnet(peerCIDR)}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("relay in %s: %v", n.Name, err)
			}
		})
	}
	t.Cleanup(stop)
	return r, stop
}

func peerOf(n *nettopo.Node) Peer {
	return Peer{Name: n.Name, UnderlayIP: n.UnderlayIP, PodCIDRs: []netip.Prefix{n.PodCIDR}}
}

func ping(t *testing.T, n ns.NetNS, dst netip.Addr) error {
	t.Helper()
	if _, err := exec.LookPath("ping"); err != nil {
		t.Fatalf("ping missing (make deps): %v", err)
	}
	return exec.Command("nsenter", "--net="+n.Path(), "ping", "-c", "3", "-i", "0.2", "-W", "2", dst.String()).Run()
}

// TestRelayBetweenNodes: two node namespaces on an underlay bridge, each
// with weft.udp and a relay, a pod behind each node's bridge: ping and TCP
// (iperf3) cross, in batches; a datagram from a host that is no node and
// one from a node with a spoofed inner source reach no pod and are
// counted by the relay, and with the encapsulation guard in front they are
// dropped (and counted) before the relay sees them.
func TestRelayBetweenNodes(t *testing.T) {
	testutil.RequireRoot(t)
	t.Run("Socket", func(t *testing.T) { relayBetweenNodes(t, func() conn.Bind { return NewSocket() }) })
	t.Run("StdNetBind", func(t *testing.T) { relayBetweenNodes(t, conn.NewStdNetBind) })
}

func relayBetweenNodes(t *testing.T, bind func() conn.Bind) {
	u := nettopo.NewUnderlay(t)
	n1, n2, outsider := u.AddNode(t, 1), u.AddNode(t, 2), u.AddNode(t, 3)
	p1, p2 := n1.AddPod(t, testMTU), n2.AddPod(t, testMTU)
	r1, _ := startNode(t, n1, n2.PodCIDR, bind)
	r2, stop2 := startNode(t, n2, n1.PodCIDR, bind)
	if pr := r1.SetPeers([]netip.Prefix{n1.PodCIDR}, []Peer{peerOf(n2)}); len(pr) != 0 {
		t.Fatal(pr)
	}
	r2.SetPeers([]netip.Prefix{n2.PodCIDR}, []Peer{peerOf(n1)})

	if err := ping(t, p1.NS, p2.IP); err != nil {
		t.Fatalf("ping pod1 -> pod2 over weft.udp: %v; relay 1 %+v, relay 2 %+v", err, r1.Stats(), r2.Stats())
	}
	if _, err := exec.LookPath("iperf3"); err == nil {
		g := nettopo.IPerf3(t, p1.NS, p2.NS, p2.IP, 1, 2)
		t.Logf("iperf3 pod1 -> pod2: %.2f Gbit/s", g)
	} else {
		t.Logf("iperf3 not installed: TCP checked by ping only")
	}
	s1 := r1.Stats()
	t.Logf("relay 1: tx %+v rx %+v drops %v mode %s", s1.Tx, s1.Rx, s1.Drops, s1.TUNMode)
	if s1.Tx.Packets == 0 || r2.Stats().Rx.Packets == 0 {
		t.Fatalf("nothing relayed: %+v", s1)
	}
	if s1.Tx.Packets < 4*s1.Tx.Batches {
		t.Errorf("%d packets in %d TUN reads: TSO reads not batched", s1.Tx.Packets, s1.Tx.Batches)
	}
	if _, own := r1.bind.(*Socket); own && s1.SocketMode != "gso+gro" {
		t.Errorf("socket mode %q", s1.SocketMode)
	}
	if s1.TUNMode != "tso+uso+gro" {
		t.Errorf("TUN mode %q", s1.TUNMode)
	}

	forged := testutil.UDPPacket(p1.IP, p2.IP, 4000, 9000, []byte("forged-outsider"))
	spoofed := testutil.UDPPacket(netip.MustParseAddr("10.244.3.2"), p2.IP, 4000, 9000, []byte("forged-spoof"))
	seen := testutil.ListenUDP(t, p2.NS, 9000)
	send := func() {
		testutil.SendUDP(t, outsider.NS, netip.AddrPortFrom(n2.UnderlayIP, DefaultPort), forged)
		testutil.SendUDP(t, n1.NS, netip.AddrPortFrom(n2.UnderlayIP, DefaultPort), spoofed)
	}
	send() // three of each
	testutil.Eventually(t, "relay drop counters", func() bool {
		d := r2.Stats().Drops
		return d["unknown-sender"] == 3 && d["spoofed-source"] == 3
	})
	if seen.Await("forged", 300*time.Millisecond) {
		t.Fatalf("a forged datagram reached pod2: %v", seen.Received("forged"))
	}

	guard := guardNode(t, n2, n1)
	send()
	testutil.Eventually(t, "guard drop counters", func() bool {
		d, err := guard.Drops(context.Background(), "udp")
		return err == nil && d[encapguard.ReasonUnknownSender] == 3 && d[encapguard.ReasonForgedInner] == 3
	})
	if d := r2.Stats().Drops; d["unknown-sender"] != 3 || d["spoofed-source"] != 3 || seen.Await("forged", 300*time.Millisecond) {
		t.Fatalf("forged datagrams passed the guard: relay drops %v", d)
	}
	if err := ping(t, p1.NS, p2.IP); err != nil {
		t.Fatalf("ping through the guard: %v", err)
	}

	// A restarted weftd: node 2's relay stops, the next one adopts the
	// device (its address and route stayed) and traffic flows again.
	stop2()
	if err := ping(t, p1.NS, p2.IP); err == nil {
		t.Fatal("ping crossed with node 2's relay stopped")
	}
	r2, _ = startNode(t, n2, n1.PodCIDR, bind)
	r2.SetPeers([]netip.Prefix{n2.PodCIDR}, []Peer{peerOf(n1)})
	if err := ping(t, p1.NS, p2.IP); err != nil {
		t.Fatalf("ping after node 2's relay restarted: %v", err)
	}
}

// guardNode puts encapguard.UDP(8285) in front of n's relay, knowing peer.
func guardNode(t *testing.T, n, peer *nettopo.Node) *encapguard.IPTables {
	t.Helper()
	ctx := context.Background()
	mode, err := iptables.Detect(ctx, n.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	g := encapguard.NewIPTables(iptables.Runner{Mode: mode, NetNS: n.NS.Path()})
	spec := encapguard.Spec{Encap: encapguard.UDP(DefaultPort), PodIface: encapguard.DefaultPodIface,
		Peers: []encapguard.Peer{{Name: peer.Name, UnderlayIP: peer.UnderlayIP, PodCIDRs: []netip.Prefix{peer.PodCIDR}}}}
	if _, err := g.Apply(ctx, spec); err != nil {
		t.Fatal(err)
	}
	return g
}
