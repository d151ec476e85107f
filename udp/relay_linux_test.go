package udp

import (
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap/encaptest"
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
	return encaptest.Start(t, n, DefaultDevice, peerCIDR, true, dev, func() (*Relay, error) {
		return NewRelay(Options{Device: dev, Bind: bind(), Port: DefaultPort, Log: log})
	})
}

func peerOf(n *nettopo.Node) Peer {
	return Peer{Name: n.Name, UnderlayIP: n.UnderlayIP, PodCIDRs: []netip.Prefix{n.PodCIDR}}
}

func ping(t *testing.T, n ns.NetNS, dst netip.Addr) error {
	t.Helper()
	return encaptest.Ping(t, n, dst)
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
	encaptest.Forgery{Node: n2, Peer: n1, From: p1, To: p2, Encap: encapguard.UDP(DefaultPort),
		Drops: func() map[string]uint64 { return r2.Stats().Drops },
		Send: func() { // three of each
			testutil.SendUDP(t, outsider.NS, netip.AddrPortFrom(n2.UnderlayIP, DefaultPort), forged)
			testutil.SendUDP(t, n1.NS, netip.AddrPortFrom(n2.UnderlayIP, DefaultPort), spoofed)
		}}.Check(t)
	pastGuard(t, n1, n2, p1, p2, r2)

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

// pastGuard: with the guard in front of node 2 (Forgery.Check left it
// there), node 1 sends datagrams the guard passes (known sender, inner
// source in node 1's pod CIDR) but the relay must not: the inner
// destination is node 2's own underlay address (outside its pod CIDR:
// written into the TUN it would reach node 2's host sockets), or the inner
// packet is cut short. The relay drops and counts both, three of each, and
// no host socket sees them.
func pastGuard(t *testing.T, n1, n2 *nettopo.Node, p1, p2 *nettopo.Pod, r2 *Relay) {
	t.Helper()
	host := testutil.ListenUDP(t, n2.NS, 9001)
	toHost := testutil.UDPPacket(p1.IP, n2.UnderlayIP, 4000, 9001, []byte("past-guard"))
	cut := testutil.UDPPacket(p1.IP, p2.IP, 4000, 9001, []byte("past-guard-cut"))
	testutil.SendUDP(t, n1.NS, netip.AddrPortFrom(n2.UnderlayIP, DefaultPort), toHost)
	testutil.SendUDP(t, n1.NS, netip.AddrPortFrom(n2.UnderlayIP, DefaultPort), cut[:len(cut)-4])
	testutil.Eventually(t, "relay drops past the guard", func() bool {
		d := r2.Stats().Drops
		return d["foreign-destination"] == 3 && d["truncated"] == 3
	})
	if host.Await("past-guard", 300*time.Millisecond) {
		t.Fatalf("a datagram to node 2's host address reached a host socket: %v", host.Received("past-guard"))
	}
}
