package ipip

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/uencap/encaptest"
)

const testMTU = 1500 - Overhead

// startNode opens (or adopts) weft.ipip in the node with its pod CIDR
// address, starts a tunnel on the node's underlay address and routes
// peerCIDR through the TUN. stop ends the tunnel (device and routes
// stay); it also runs at test end.
func startNode(t testing.TB, n *nettopo.Node, peerCIDR netip.Prefix) (*Tunnel, func()) {
	t.Helper()
	return startNodeSeg(t, n, peerCIDR, 0)
}

// startNodeSeg is startNode with the pods' MTU (Options.SegmentMTU).
func startNodeSeg(t testing.TB, n *nettopo.Node, peerCIDR netip.Prefix, podMTU int) (*Tunnel, func()) {
	t.Helper()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dev, err := OpenDevice(DeviceOptions{MTU: testMTU, NetNS: n.NS.Path(), PodCIDR: n.PodCIDR, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	return encaptest.Start(t, n, DefaultDevice, peerCIDR, false, dev, func() (*Tunnel, error) {
		return NewTunnel(Options{Device: dev, LocalIP: n.UnderlayIP, Log: log, SegmentMTU: podMTU})
	})
}

func peerOf(n *nettopo.Node) Peer {
	return Peer{Name: n.Name, UnderlayIP: n.UnderlayIP, PodCIDRs: []netip.Prefix{n.PodCIDR}}
}

func ping(t *testing.T, n ns.NetNS, dst netip.Addr) error {
	t.Helper()
	return encaptest.Ping(t, n, dst)
}

// capture runs tcpdump on the underlay bridge for IP protocol 4 until the
// returned function is called, which returns the lines it printed.
func capture(t *testing.T, u *nettopo.Underlay) func() []string {
	t.Helper()
	cmd := exec.Command("nsenter", "--net="+u.NS.Path(), "tcpdump", "-l", "-n", "-i", "ul", "ip proto 4")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errs, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	ready := make(chan struct{})
	go func() { // tcpdump says "listening on" once the capture runs
		s := bufio.NewScanner(errs)
		for s.Scan() {
			if strings.Contains(s.Text(), "listening on") {
				close(ready)
			}
		}
	}()
	var mu sync.Mutex
	var lines []string
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			mu.Lock()
			lines = append(lines, s.Text())
			mu.Unlock()
		}
	}()
	select {
	case <-ready:
	case <-time.After(5 * time.Second):
		t.Fatal("tcpdump did not start")
	}
	var once sync.Once
	stop := func() []string {
		once.Do(func() {
			time.Sleep(200 * time.Millisecond)
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		mu.Lock()
		defer mu.Unlock()
		return lines
	}
	t.Cleanup(func() { stop() })
	return stop
}

// TestTunnelBetweenNodes: two node namespaces on an underlay bridge, each
// with weft.ipip and a tunnel, a pod behind each: ping and TCP cross as IP
// protocol 4 on the underlay (tcpdump decodes outer and inner IPv4); an
// IP-in-IP packet from a host that is no node and one from a node with a
// spoofed inner source reach no pod and are counted by the tunnel, and
// with the encapsulation guard in front they are dropped (and counted)
// before the tunnel sees them.
func TestTunnelBetweenNodes(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"ping", "tcpdump"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing (make deps): %v", tool, err)
		}
	}
	u := nettopo.NewUnderlay(t)
	n1, n2, outsider := u.AddNode(t, 1), u.AddNode(t, 2), u.AddNode(t, 3)
	p1, p2 := n1.AddPod(t, testMTU), n2.AddPod(t, testMTU)
	t1, _ := startNode(t, n1, n2.PodCIDR)
	t2, stop2 := startNode(t, n2, n1.PodCIDR)
	if pr := t1.SetPeers([]netip.Prefix{n1.PodCIDR}, []Peer{peerOf(n2)}); len(pr) != 0 {
		t.Fatal(pr)
	}
	t2.SetPeers([]netip.Prefix{n2.PodCIDR}, []Peer{peerOf(n1)})

	lines := capture(t, u)
	if err := ping(t, p1.NS, p2.IP); err != nil {
		t.Fatalf("ping pod1 -> pod2 over weft.ipip: %v; tunnel 1 %+v, tunnel 2 %+v", err, t1.Stats(), t2.Stats())
	}
	got := lines()
	want := fmt.Sprintf("IP %s > %s: IP %s > %s: ICMP echo request", n1.UnderlayIP, n2.UnderlayIP, p1.IP, p2.IP)
	wantReply := fmt.Sprintf("IP %s > %s: IP %s > %s: ICMP echo reply", n2.UnderlayIP, n1.UnderlayIP, p2.IP, p1.IP)
	if !anyContains(got, want) || !anyContains(got, wantReply) {
		t.Fatalf("underlay capture lacks IP-in-IP %q / %q:\n%s", want, wantReply, strings.Join(got, "\n"))
	}
	if _, err := exec.LookPath("iperf3"); err == nil {
		g := nettopo.IPerf3(t, p1.NS, p2.NS, p2.IP, 1, 2)
		t.Logf("iperf3 pod1 -> pod2 over userspace IPIP: %.2f Gbit/s", g)
	} else {
		t.Logf("iperf3 not installed: TCP not checked")
	}
	s1 := t1.Stats()
	t.Logf("tunnel 1: tx %+v rx %+v drops %v tun %s", s1.Tx, s1.Rx, s1.Drops, s1.TUNMode)
	if s1.Tx.Packets == 0 || t2.Stats().Rx.Packets == 0 || s1.Mode != Userspace {
		t.Fatalf("nothing tunnelled: %+v", s1)
	}

	forgedAndSpoofed(t, n1, n2, outsider, p1, p2, t2)

	// A restarted weftd: node 2's tunnel stops, the next one adopts the
	// device (its address and route stayed) and traffic flows again.
	stop2()
	if err := ping(t, p1.NS, p2.IP); err == nil {
		t.Fatal("ping crossed with node 2's tunnel stopped")
	}
	t2, _ = startNode(t, n2, n1.PodCIDR)
	t2.SetPeers([]netip.Prefix{n2.PodCIDR}, []Peer{peerOf(n1)})
	if err := ping(t, p1.NS, p2.IP); err != nil {
		t.Fatalf("ping after node 2's tunnel restarted: %v", err)
	}
}

func anyContains(lines []string, s string) bool {
	for _, l := range lines {
		if strings.Contains(l, s) {
			return true
		}
	}
	return false
}

// sendIPIP sends inner (a whole IPv4 packet) as IP-in-IP from the
// namespace n to dst: the kernel adds the outer header with n's address.
func sendIPIP(t *testing.T, n ns.NetNS, dst netip.Addr, inner []byte) {
	t.Helper()
	err := n.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, Protocol)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, inner, 0, &unix.SockaddrInet4{Addr: dst.As4()})
	})
	if err != nil {
		t.Fatalf("send ipip to %s: %v", dst, err)
	}
}

// forgedAndSpoofed: IP-in-IP from a host that is no node, and from node 1
// with an inner source outside its pod CIDR, three of each: the tunnel
// drops and counts them; then the encapsulation guard drops them first.
func forgedAndSpoofed(t *testing.T, n1, n2, outsider *nettopo.Node, p1, p2 *nettopo.Pod, t2 *Tunnel) {
	t.Helper()
	encaptest.Forgery{Node: n2, Peer: n1, From: p1, To: p2, Encap: encapguard.IPIP(),
		Drops: func() map[string]uint64 { return t2.Stats().Drops },
		Send: func() {
			for range 3 {
				sendIPIP(t, outsider.NS, n2.UnderlayIP, udp4(netip.MustParseAddr("10.244.1.2"), p2.IP, "forged-outsider"))
				sendIPIP(t, n1.NS, n2.UnderlayIP, udp4(netip.MustParseAddr("10.244.3.2"), p2.IP, "forged-spoof"))
			}
		}}.Check(t)
}
