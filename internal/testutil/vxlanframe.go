package testutil

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// VXLANFrame is a hand-built VXLAN payload carrying one IPv4/UDP packet,
// for tests that forge encapsulated traffic: send Bytes() with an ordinary
// UDP socket to a node's VXLAN port.
type VXLANFrame struct {
	VNI              uint32
	DstMAC, SrcMAC   net.HardwareAddr // inner Ethernet addresses
	Src, Dst         netip.Addr       // inner IPv4 addresses
	SrcPort, DstPort uint16           // inner UDP ports
	Payload          []byte
}

// Bytes returns VXLAN header + Ethernet + IPv4 (valid header checksum) +
// UDP (checksum 0, "none", legal over IPv4) + payload.
func (f VXLANFrame) Bytes() []byte {
	udpLen := 8 + len(f.Payload)
	ipLen := 20 + udpLen
	b := make([]byte, 8+14+ipLen)
	b[0] = 0x08 // VNI present
	binary.BigEndian.PutUint32(b[4:8], f.VNI<<8)
	eth := b[8:]
	copy(eth[0:6], f.DstMAC)
	copy(eth[6:12], f.SrcMAC)
	binary.BigEndian.PutUint16(eth[12:14], 0x0800)
	ip := eth[14:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(ipLen))
	binary.BigEndian.PutUint16(ip[4:6], 0x1234)
	binary.BigEndian.PutUint16(ip[6:8], 0x4000) // DF
	ip[8], ip[9] = 64, 17
	src, dst := f.Src.As4(), f.Dst.As4()
	copy(ip[12:16], src[:])
	copy(ip[16:20], dst[:])
	binary.BigEndian.PutUint16(ip[10:12], ipChecksum(ip[:20]))
	udp := ip[20:]
	binary.BigEndian.PutUint16(udp[0:2], f.SrcPort)
	binary.BigEndian.PutUint16(udp[2:4], f.DstPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpLen))
	copy(udp[8:], f.Payload)
	return b
}

func ipChecksum(h []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(h); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(h[i : i+2]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// Inbox receives UDP datagrams on one socket inside a network namespace.
type Inbox chan string

// ListenUDP opens a UDP socket on addr inside n (closed when the test
// ends) and returns the datagrams it receives.
func ListenUDP(t testing.TB, n ns.NetNS, addr netip.AddrPort) Inbox {
	t.Helper()
	var c net.PacketConn
	if err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = net.ListenPacket("udp4", addr.String())
		return err
	}); err != nil {
		t.Fatalf("listen udp %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	in := make(Inbox, 64)
	go func() {
		buf := make([]byte, 2048)
		for {
			k, _, err := c.ReadFrom(buf)
			if err != nil {
				return
			}
			in <- string(buf[:k])
		}
	}()
	return in
}

// Got reports whether a datagram equal to token arrives within wait.
func (in Inbox) Got(token string, wait time.Duration) bool {
	deadline := time.After(wait)
	for {
		select {
		case m := <-in:
			if m == token {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

// SendUDP sends payload three times from inside n to dst over an ordinary
// UDP socket.
func SendUDP(t testing.TB, n ns.NetNS, dst netip.AddrPort, payload []byte) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error {
		c, err := net.Dial("udp4", dst.String())
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write(payload); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("send udp to %s: %v", dst, err)
	}
}
