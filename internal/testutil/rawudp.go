package testutil

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// UDPPacket builds an IPv4+UDP packet by hand, with any source address
// (what a pod with CAP_NET_RAW can forge), both checksums filled in.
func UDPPacket(src, dst netip.Addr, sport, dport uint16, payload []byte) []byte {
	s, d := src.As4(), dst.As4()
	ulen := 8 + len(payload)
	p := make([]byte, 20+ulen)
	p[0], p[8], p[9] = 0x45, 64, unix.IPPROTO_UDP // version 4, IHL 5; TTL; protocol
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[6:], 0x4000) // DF
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:], checksum(p[:20], 0))
	u := p[20:]
	binary.BigEndian.PutUint16(u[0:], sport)
	binary.BigEndian.PutUint16(u[2:], dport)
	binary.BigEndian.PutUint16(u[4:], uint16(ulen))
	copy(u[8:], payload)
	pseudo := uint32(unix.IPPROTO_UDP) + uint32(ulen)
	for _, a := range [][]byte{s[:], d[:]} {
		pseudo += uint32(binary.BigEndian.Uint16(a[:2])) + uint32(binary.BigEndian.Uint16(a[2:]))
	}
	c := checksum(u, pseudo)
	if c == 0 {
		c = 0xffff // 0 means "no checksum" in UDP
	}
	binary.BigEndian.PutUint16(u[6:], c)
	return p
}

// checksum is the Internet checksum of b, starting from a partial sum.
func checksum(b []byte, sum uint32) uint16 {
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

// SendRawUDP sends one hand-built IPv4+UDP packet from the namespace n
// through an AF_INET SOCK_RAW socket with IP_HDRINCL: the kernel routes it
// by destination and keeps the given source address.
func SendRawUDP(n ns.NetNS, src, dst netip.Addr, sport, dport uint16, payload string) error {
	pkt := UDPPacket(src, dst, sport, dport, []byte(payload))
	return n.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW, unix.IPPROTO_UDP)
		if err != nil {
			return fmt.Errorf("raw socket: %w", err)
		}
		defer unix.Close(fd)
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1); err != nil {
			return fmt.Errorf("IP_HDRINCL: %w", err)
		}
		if err := unix.Sendto(fd, pkt, 0, &unix.SockaddrInet4{Addr: dst.As4()}); err != nil {
			return fmt.Errorf("send %s -> %s: %w", src, dst, err)
		}
		return nil
	})
}

// UDPLog is a UDP listener inside a namespace that records what arrives.
type UDPLog struct {
	mu  sync.Mutex
	got []string // "payload from ip:port"
}

// ListenUDP listens on UDP port inside n until the test ends.
func ListenUDP(t testing.TB, n ns.NetNS, port int) *UDPLog {
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
	l := &UDPLog{}
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

// Received returns the records whose payload starts with prefix.
func (l *UDPLog) Received(prefix string) []string {
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
