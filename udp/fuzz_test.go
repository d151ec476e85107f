package udp

import (
	"bytes"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap"
)

// FuzzDecap feeds arbitrary datagrams from arbitrary senders through the
// receive path (Check and the batch that writes into the TUN). It must
// never panic, and what it writes must be a packet from a known node's
// pods to this node's pods, no larger than the MTU, as the datagram
// carried it. The seeds in testdata/fuzz/FuzzDecap run with every go test.
//
//	go test -run '^$' -fuzz FuzzDecap ./udp/
func FuzzDecap(f *testing.F) {
	f.Add(nodeB.AsSlice(), ip4("10.244.2.5", "10.244.1.7"))
	f.Add(nodeB.AsSlice(), ip6("fd00:244:2::5", "fd00:244:1::7", 8))
	tab, _ := NewTable(local, []Peer{peerB}, 8285)
	const mtu = 1472
	f.Fuzz(func(t *testing.T, from, pkt []byte) {
		addr, _ := netip.AddrFromSlice(from)
		n, reason := tab.Check(addr, pkt, mtu)
		if reason == OK {
			if n > len(pkt) || n > mtu || n < 20 {
				t.Fatalf("accepted length %d of a %d-byte datagram (mtu %d)", n, len(pkt), mtu)
			}
			_, src, dst, _ := parse(pkt[:n])
			if !containsAddr(tab.peers[tab.bySender[addr.Unmap()]].cidrs, src) || !containsAddr(tab.local, dst) {
				t.Fatalf("accepted %s -> %s from %s", src, dst, addr)
			}
		}
		if len(pkt) > tun.MaxPacket {
			return
		}
		dev := tun.NewFake("weft.udp", mtu, 1)
		r := &Relay{pump: uencap.Pump{Dev: dev}}
		buf := make([]byte, tun.BufSize)
		copy(buf[tun.Offset:], pkt)
		ep := &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(addr, DefaultPort)}
		r.decapBatch(tab, [][]byte{buf}, []int{len(pkt)}, []conn.Endpoint{ep}, nil)
		w := dev.Written()
		switch {
		case reason == OK && (len(w) != 1 || !bytes.Equal(w[0], pkt[:n])):
			t.Fatalf("valid packet written as %x, want %x", w, pkt[:n])
		case reason != OK && len(w) != 0:
			t.Fatalf("dropped (%s) packet written", reason)
		case reason != OK && len(pkt) > 0 && r.pump.Dropped(reason) != 1:
			// (an empty datagram is skipped uncounted: the socket's batch
			// leaves empty slots that look the same)
			t.Fatalf("drop %s not counted", reason)
		}
	})
}
