package policy

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/iptables"
)

// TestKernelSpoofedSource: pod c, which holds CAP_NET_RAW as pods do, sends
// hand-built UDP packets carrying pod a's source address through a raw
// socket. With a policy that admits only a into b, neither the bridged
// packet to b nor the routed one to the "remote" namespace arrives, even on
// the 5-tuple of a's live flow (conntrack); a's own packets do, and the
// anti-spoofing DROP counts the forged ones.
func TestKernelSpoofedSource(t *testing.T) {
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) { testKernelSpoofedSource(t, mode) })
	}
}

func testKernelSpoofedSource(t *testing.T, mode iptables.Mode) {
	tn := newTestNode(t)
	w, run := tn.writer(t, mode)
	t.Cleanup(func() { _, _ = w.Apply(context.Background(), &State{}, true) })
	onlyA := withIngress(np("t", "b-from-a", map[string]string{"pod": "b"}, tIn), in([]from{{PodSelector: ls("pod", "a")}}))
	apply(t, w, tn.render(onlyA), false)

	const port, sport = 9999, 40000
	atB := listenUDP(t, tn.pods["b"], port)
	atRemote := listenUDP(t, tn.remote, port)
	a, b, remote := addr(tn.ip["a"]), addr(tn.ip["b"]), addr(tn.ip["remote"])
	// Positive controls through the same raw-socket path: a's real packets
	// arrive, bridged to b and routed to remote (and open conntrack entries).
	for _, dst := range []struct {
		ip netip.Addr
		l  *udpLog
	}{{b, atB}, {remote, atRemote}} {
		if !sendUntil(t, tn.pods["a"], a, dst.ip, sport, port, "real-"+dst.ip.String(), dst.l) {
			t.Fatalf("a's own packet to %s never arrived", dst.ip)
		}
	}
	// c forges a's address, on the same ports as a's flows.
	for i := 0; i < 3; i++ {
		rawUDP(t, tn.pods["c"], a, b, sport, port, "forged-b")
		rawUDP(t, tn.pods["c"], a, remote, sport, port, "forged-remote")
	}
	// And an unforged packet from c to remote, which its policy allows,
	// shows c's packets do leave when honest.
	if !sendUntil(t, tn.pods["c"], addr(tn.ip["c"]), remote, sport, port, "c-honest", atRemote) {
		t.Fatal("c's unforged packet to remote never arrived")
	}
	time.Sleep(500 * time.Millisecond)
	for _, l := range []*udpLog{atB, atRemote} {
		if got := l.received("forged-"); len(got) > 0 {
			t.Errorf("forged packets arrived: %v", got)
		}
	}
	if n := dropCount(t, tn, run, ChainSource, SpoofComment); n < 6 {
		t.Errorf("%s DROP counted %d packets, want >= 6", ChainSource, n)
	}
}

// udpLog records what a UDP listener received.
type udpLog struct {
	mu  sync.Mutex
	got []string // "payload from ip:port"
}

func (l *udpLog) received(prefix string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, g := range l.got {
		if strings.HasPrefix(g, prefix) {
			out = append(out, g)
		}
	}
	return out
}

func listenUDP(t *testing.T, n ns.NetNS, port int) *udpLog {
	t.Helper()
	var pc net.PacketConn
	err := n.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenPacket("udp4", ":"+strconv.Itoa(port))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	l := &udpLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			l.mu.Lock()
			l.got = append(l.got, string(buf[:k])+" from "+from.String())
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { pc.Close(); <-done })
	return l
}

// sendUntil sends one raw packet a second until l has received it (the first
// ones may wait for ARP), for up to 5 s.
func sendUntil(t *testing.T, n ns.NetNS, src, dst netip.Addr, sport, dport uint16, payload string, l *udpLog) bool {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		rawUDP(t, n, src, dst, sport, dport, payload)
		for i := 0; i < 10; i++ {
			if len(l.received(payload+" ")) > 0 {
				return true
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return false
}

// rawUDP sends one IPv4+UDP packet built by hand (any source address) from
// namespace n through an AF_INET SOCK_RAW socket with IP_HDRINCL.
func rawUDP(t *testing.T, n ns.NetNS, src, dst netip.Addr, sport, dport uint16, payload string) {
	t.Helper()
	pkt := udpPacket(src, dst, sport, dport, []byte(payload))
	err := n.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1); err != nil {
			return fmt.Errorf("IP_HDRINCL: %w", err)
		}
		return unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()})
	})
	if err != nil {
		t.Fatal(err)
	}
}

func udpPacket(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	s, d := src.As4(), dst.As4()
	ulen := 8 + len(payload)
	p := make([]byte, 20+ulen)
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_UDP // version 4, IHL 5; TTL; protocol
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:], 0x4000) // DF
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:], csum(p[:20], 0))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(ulen))
	copy(u[8:], payload)
	pseudo := uint32(binary.BigEndian.Uint16(s[:2])) + uint32(binary.BigEndian.Uint16(s[2:])) +
		uint32(binary.BigEndian.Uint16(d[:2])) + uint32(binary.BigEndian.Uint16(d[2:])) + unix.IPPROTO_UDP + uint32(ulen)
	c := csum(u, pseudo)
	if c == 0 {
		c = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return p
}

// csum is the Internet checksum of b, starting from the partial sum.
func csum(b []byte, sum uint32) uint16 {
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// dropCount reads the packet counter of the rule in chain whose comment
// ends with comment.
func dropCount(t *testing.T, tn *testNode, run iptables.Runner, chain, comment string) int {
	t.Helper()
	out := sh(t, tn.node.Path(), "iptables-"+string(run.Mode), "-w", "-t", "filter", "-L", chain, "-v", "-x", "-n")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(line, "/* weft:") && strings.HasSuffix(strings.TrimSpace(line), comment+" */") {
			n, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatalf("counter in %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no rule %q in %s:\n%s", comment, chain, out)
	return 0
}
