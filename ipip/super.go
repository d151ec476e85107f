package ipip

import (
	"encoding/binary"

	"github.com/weftnet/weft/internal/tun"
)

// Merged TCP segments.
//
// The kernel's IP-in-IP GRO (ipip_gro_receive) is built into every
// kernel, with or without the ipip module: a receiving NIC that does GRO,
// or a sender whose packets are coalesced on their way, can hand the raw
// socket one IP-in-IP packet whose inner TCP segment carries the payload
// of several wire packets, larger than the TUN's MTU. GRO leaves such a
// segment's TCP checksum field holding the pseudo-header sum only (the
// kernel's CHECKSUM_PARTIAL form, completed by whoever segments it), and
// does the same for a merge of small segments that fits the MTU. (Fraglist
// GRO, off unless an operator turns rx-gro-list on, leaves the first
// segment's checksum instead: such a merge larger than the pods' MTU is
// cut, which recomputes every checksum; one within it is not repaired.)
//
// The tunnel hands a merged segment larger than the MTU to the TUN as one
// GSO write (virtio-net header: TCPv4, the segment size, checksum to be
// completed) where the device exchanges virtio-net headers, and cuts it
// into segments itself where it does not. A merge within the MTU gets its
// checksum completed. The segment size is the pod MTU's (Options.SegmentMTU):
// the largest a pod behind this node takes, never larger than what the
// sender sent through a path of that MTU.

// tcpSuper reports whether in (one whole IPv4 packet, header length hl)
// looks like what GRO merges: TCP, no IP options, not a fragment, a whole
// TCP header, ACK set and none of SYN, RST, URG (GRO never merges those,
// and cutting would copy them onto every segment).
func tcpSuper(in []byte, hl int) bool {
	if hl != 20 || in[9] != 6 || binary.BigEndian.Uint16(in[6:8])&0x3fff != 0 || len(in) < hl+20 {
		return false
	}
	thl := int(in[hl+12]>>4) * 4
	flags := in[hl+13]
	const ack, synRstUrg = 0x10, 0x02 | 0x04 | 0x20
	return thl >= 20 && hl+thl <= len(in) && flags&ack != 0 && flags&synRstUrg == 0
}

// pseudoSum is the folded ones' complement sum of the TCP pseudo-header of
// in (IPv4 header length hl), without the complement: the value GRO leaves
// in a merged segment's checksum field.
func pseudoSum(in []byte, hl int) uint16 {
	s := sum16(0, in[12:20])
	s += 6 + uint32(len(in)-hl)
	return fold(s)
}

func sum16(s uint32, b []byte) uint32 {
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

// tcpChecksum sets the TCP checksum of the IPv4 TCP packet in.
func tcpChecksum(in []byte, hl int) {
	in[hl+16], in[hl+17] = 0, 0
	s := sum16(0, in[12:20]) + 6 + uint32(len(in)-hl)
	binary.BigEndian.PutUint16(in[hl+16:], ^fold(sum16(s, in[hl:])))
}

// completeMerged completes the checksum of a TCP packet within the MTU
// that GRO merged (its checksum field holds the pseudo-header sum and the
// whole does not check); other packets are left as they are. The common
// case costs one pseudo-header sum.
func completeMerged(in []byte) {
	hl := int(in[0]&0x0f) * 4
	if !tcpSuper(in, hl) || binary.BigEndian.Uint16(in[hl+16:]) != pseudoSum(in, hl) {
		return
	}
	s := sum16(0, in[12:20]) + 6 + uint32(len(in)-hl)
	if fold(sum16(s, in[hl:])) == 0xffff { // a complete checksum that happens to equal it
		return
	}
	tcpChecksum(in, hl)
}

// segmentSize is the payload of each segment a merged TCP packet in is
// cut into for a path of MTU mtu.
func segmentSize(in []byte, mtu int) int {
	hl := int(in[0]&0x0f) * 4
	return mtu - hl - int(in[hl+12]>>4)*4
}

// gsoHeader writes into h (virtio-net header length) the header of a GSO
// write of the merged TCP packet in: checksum to be completed from the TCP
// header on, TCPv4 segments of mss bytes (ECN when the first carries CWR).
func gsoHeader(h []byte, in []byte, mss int) {
	hl := int(in[0]&0x0f) * 4
	thl := int(in[hl+12]>>4) * 4
	const needsCsum, tcpv4, ecn = 1, 1, 0x80
	h[0], h[1] = needsCsum, tcpv4
	if in[hl+13]&0x80 != 0 { // CWR
		h[1] |= ecn
	}
	// native byte order, as the TUN (no TUNSETVNETLE/BE) and wireguard-go use
	binary.NativeEndian.PutUint16(h[2:], uint16(hl+thl))
	binary.NativeEndian.PutUint16(h[4:], uint16(mss))
	binary.NativeEndian.PutUint16(h[6:], uint16(hl))
	binary.NativeEndian.PutUint16(h[8:], 16)
}

// cutTCP cuts the merged TCP packet in into segments of at most mss (> 0)
// payload bytes, each written after tun.Offset bytes of headroom into a
// buffer of *pool (grown when short), and returns them in out[:0]:
// sequence numbers advanced, IP IDs counted up, PSH and FIN kept for the
// last, CWR for the first, every checksum complete.
func cutTCP(in []byte, mss int, pool *[][]byte, out [][]byte) [][]byte {
	hl := int(in[0]&0x0f) * 4
	thl := int(in[hl+12]>>4) * 4
	hdr := hl + thl
	payload := in[hdr:]
	seq := binary.BigEndian.Uint32(in[hl+4:])
	id := binary.BigEndian.Uint16(in[4:])
	flags := in[hl+13]
	out = out[:0]
	for i, at := 0, 0; at < len(payload); i++ {
		n := min(mss, len(payload)-at)
		if i >= len(*pool) {
			*pool = append(*pool, make([]byte, tun.BufSize))
		}
		b := (*pool)[i][:tun.Offset+hdr+n]
		seg := b[tun.Offset:]
		copy(seg, in[:hdr])
		copy(seg[hdr:], payload[at:at+n])
		binary.BigEndian.PutUint16(seg[2:], uint16(hdr+n))
		binary.BigEndian.PutUint16(seg[4:], id+uint16(i))
		seg[10], seg[11] = 0, 0
		binary.BigEndian.PutUint16(seg[10:], ^headerSum(seg[:hl]))
		binary.BigEndian.PutUint32(seg[hl+4:], seq+uint32(at))
		f := flags
		if at+n < len(payload) {
			f &^= 0x09 // FIN, PSH: the last segment's
		}
		if i > 0 {
			f &^= 0x80 // CWR: the first's
		}
		seg[hl+13] = f
		tcpChecksum(seg, hl)
		out = append(out, b)
		at += n
	}
	return out
}
