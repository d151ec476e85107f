package testutil

import (
	"encoding/binary"
	"net"
	"net/netip"
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
