package ipip

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap"
)

// FuzzDecap feeds arbitrary packets, as the raw socket returns them
// (outer header included), through the receive path (Decap and the batch
// that writes into the TUN). It must never panic, and what it writes must
// be a whole IPv4 packet from a known node's pods to this node's pods, no
// larger than the MTU, as the packet carried it. The seeds in
// testdata/fuzz/FuzzDecap run with every go test.
//
//	go test -run '^$' -fuzz FuzzDecap ./ipip/
func FuzzDecap(f *testing.F) {
	f.Add(Outer(nodeA, nodeB, udp4(podA, podB, "valid")))
	tab, _ := NewTable([]netip.Prefix{cidrB}, []Peer{{Name: "a", UnderlayIP: nodeA, PodCIDRs: []netip.Prefix{cidrA}}})
	const mtu = 1480
	f.Fuzz(func(t *testing.T, pkt []byte) {
		off, n, reason := tab.Decap(pkt, mtu)
		if reason == OK {
			if off < 20 || n < 20 || off+n > len(pkt) || n > mtu {
				t.Fatalf("accepted [%d:%d] of a %d-byte packet (mtu %d)", off, off+n, len(pkt), mtu)
			}
			in := pkt[off : off+n]
			from := netip.AddrFrom4([4]byte(pkt[12:16]))
			src, dst := netip.AddrFrom4([4]byte(in[12:16])), netip.AddrFrom4([4]byte(in[16:20]))
			if from != nodeA || !cidrA.Contains(src) || !cidrB.Contains(dst) || headerSum(in[:int(in[0]&0xf)*4]) != 0xffff {
				t.Fatalf("accepted %s -> %s from %s", src, dst, from)
			}
		}
		if len(pkt) > tun.BufSize {
			return
		}
		dev := tun.NewFake(DefaultDevice, mtu, 1)
		tn := &Tunnel{pump: uencap.Pump{Dev: dev}}
		buf := make([]byte, tun.BufSize)
		copy(buf, pkt)
		tn.decapBatch(tab, [][]byte{buf}, []int{len(pkt)}, nil)
		w := dev.Written()
		switch {
		case reason == OK && (len(w) != 1 || !bytes.Equal(w[0], pkt[off:off+n])):
			t.Fatalf("valid packet written as %x, want %x", w, pkt[off:off+n])
		case reason != OK && len(w) != 0:
			t.Fatalf("dropped (%s) packet written", reason)
		case reason != OK && tn.pump.Dropped(reason) != 1:
			t.Fatalf("drop %s not counted", reason)
		}
	})
}

// TestSeedReasons: each named seed of the corpus is dropped for the
// reason it is named after (or accepted: "valid", "trailing").
func TestSeedReasons(t *testing.T) {
	tab, _ := NewTable([]netip.Prefix{cidrB}, []Peer{{Name: "a", UnderlayIP: nodeA, PodCIDRs: []netip.Prefix{cidrA}}})
	want := map[string]Reason{"valid": OK, "trailing": OK, "unknown-sender": DropUnknownSender,
		"spoofed-source": DropSpoofedSource, "foreign-destination": DropForeignDestination, "bad-checksum": DropNotIPv4,
		"truncated": DropTruncated, "not-protocol-4": DropMalformed, "inner-ipv6": DropNotIPv4, "oversize": DropOversize,
		"outer-ihl-past-end": DropMalformed, "empty": DropMalformed, "outer-only": DropTruncated}
	for name, r := range want {
		raw, err := os.ReadFile(filepath.Join("testdata/fuzz/FuzzDecap", name))
		if err != nil {
			t.Fatal(err)
		}
		_, q, _ := strings.Cut(string(raw), "[]byte(")
		pkt, err := strconv.Unquote(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(q), ")")))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if _, _, got := tab.Decap([]byte(pkt), 1480); got != r {
			t.Errorf("%s: %q, want %q", name, got, r)
		}
	}
}
