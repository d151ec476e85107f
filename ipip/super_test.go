package ipip

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// mergedTCP is a TCP/IPv4 packet src -> dst as GRO leaves a merge: the
// given payload behind a 32-byte TCP header (timestamps), flags as given,
// the checksum field holding the pseudo-header sum only.
func mergedTCP(src, dst netip.Addr, seq uint32, flags byte, payload []byte) []byte {
	const hl, thl = 20, 32
	p := make([]byte, hl+thl+len(payload))
	p[0], p[8], p[9] = 0x45, 64, 6
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 100)
	p[6] = 0x40 // DF
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:], ^headerSum(p[:hl]))
	binary.BigEndian.PutUint16(p[hl:], 5201)
	binary.BigEndian.PutUint16(p[hl+2:], 40000)
	binary.BigEndian.PutUint32(p[hl+4:], seq)
	p[hl+12], p[hl+13] = thl/4<<4, flags
	copy(p[hl+thl:], payload)
	binary.BigEndian.PutUint16(p[hl+16:], pseudoSum(p, hl))
	return p
}

// tcpValid reports whether the IPv4 header and TCP checksums of p check.
func tcpValid(p []byte) bool {
	hl := int(p[0]&0x0f) * 4
	s := sum16(0, p[12:20]) + 6 + uint32(len(p)-hl)
	return headerSum(p[:hl]) == 0xffff && fold(sum16(s, p[hl:])) == 0xffff
}

// TestCutMerged: a merged TCP segment larger than the MTU, through a TUN
// that takes no GSO writes, comes out as segments of the segment MTU, in
// order, each with complete checksums, sequence numbers and IP IDs
// counted up, PSH on the last and CWR on the first only; a merge within
// the MTU gets its checksum completed; a UDP packet over the MTU is still
// dropped as oversize.
func TestCutMerged(t *testing.T) {
	n := NewFakeNet()
	b := startFake(t, n, nodeB, cidrB, Peer{Name: "a", UnderlayIP: nodeA, PodCIDRs: []netip.Prefix{cidrA}})
	payload := make([]byte, 3000)
	for i := range payload {
		payload[i] = byte(i * 7)
	}
	const cwrPsh = 0x80 | 0x10 | 0x08
	n.Deliver(Outer(nodeA, nodeB, mergedTCP(podA, podB, 1000, cwrPsh, payload)))
	small := mergedTCP(podA, podB, 4000, 0x10|0x08, payload[:600])
	if tcpValid(small) {
		t.Fatal("test packet: a merge's checksum must not check as it is")
	}
	n.Deliver(Outer(nodeA, nodeB, small))
	n.Deliver(Outer(nodeA, nodeB, testutil.UDPPacket(podA, podB, 1, 2, make([]byte, 1500))))

	w := written(b.dev, 4)
	// the fake TUN's MTU is 1480: 1480 - 20 - 32 = 1428 payload bytes a segment
	wantLens := []int{1428, 1428, 144, 600}
	if len(w) != len(wantLens) {
		t.Fatalf("TUN got %d packets, want %d", len(w), len(wantLens))
	}
	var got []byte
	for i, p := range w {
		hl := int(p[0]&0x0f) * 4
		flags := p[hl+13]
		if !tcpValid(p) {
			t.Fatalf("segment %d: checksums do not check", i)
		}
		if l := len(p) - 52; l != wantLens[i] {
			t.Fatalf("segment %d: %d payload bytes, want %d", i, l, wantLens[i])
		}
		if i == 3 {
			break
		}
		if seq := binary.BigEndian.Uint32(p[hl+4:]); seq != 1000+uint32(i*1428) {
			t.Fatalf("segment %d: seq %d", i, seq)
		}
		if id := binary.BigEndian.Uint16(p[4:]); id != 100+uint16(i) {
			t.Fatalf("segment %d: IP ID %d", i, id)
		}
		if psh, cwr := flags&0x08 != 0, flags&0x80 != 0; psh != (i == 2) || cwr != (i == 0) || flags&0x10 == 0 {
			t.Fatalf("segment %d: flags %#x", i, flags)
		}
		got = append(got, p[52:]...)
	}
	if !bytes.Equal(got, payload) {
		t.Fatal("segments do not carry the merged payload in order")
	}
	if !bytes.Equal(w[3][52:], payload[:600]) {
		t.Fatal("the small merge's payload changed")
	}
	testutil.Eventually(t, "oversize UDP dropped", func() bool { return b.t.Stats().Drops["oversize"] == 1 })
	if s := b.t.Stats(); s.Merged != 1 || s.Rx.Packets != 4 {
		t.Fatalf("stats %+v", s)
	}
}
