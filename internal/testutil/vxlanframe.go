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

// Bytes returns VXLAN header + Ethernet + the IPv4/UDP packet UDPPacket
// builds.
func (f VXLANFrame) Bytes() []byte {
	b := make([]byte, 8+14)
	b[0] = 0x08 // VNI present
	binary.BigEndian.PutUint32(b[4:8], f.VNI<<8)
	copy(b[8:14], f.DstMAC)
	copy(b[14:20], f.SrcMAC)
	binary.BigEndian.PutUint16(b[20:22], 0x0800)
	return append(b, UDPPacket(f.Src, f.Dst, f.SrcPort, f.DstPort, f.Payload)...)
}

// Await reports whether a datagram whose payload starts with prefix
// arrives within wait.
func (l *UDPLog) Await(prefix string, wait time.Duration) bool {
	for deadline := time.Now().Add(wait); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if len(l.Received(prefix)) > 0 {
			return true
		}
	}
	return len(l.Received(prefix)) > 0
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
