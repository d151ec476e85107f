package udp

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

var (
	nodeA = netip.MustParseAddr("192.168.77.11")
	nodeB = netip.MustParseAddr("192.168.77.12")
	local = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/64")}
	peerB = Peer{Name: "b", UnderlayIP: nodeB,
		PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24"), netip.MustParsePrefix("fd00:244:2::/64")}}
)

func a(s string) netip.Addr { return netip.MustParseAddr(s) }

func ip4(src, dst string) []byte {
	return testutil.UDPPacket(a(src), a(dst), 1000, 2000, []byte("hello"))
}

func ip6(src, dst string, payload int) []byte {
	p := make([]byte, 40+payload)
	p[0] = 0x60
	binary.BigEndian.PutUint16(p[4:6], uint16(payload))
	p[6], p[7] = 59, 64 // no next header, hop limit
	s, d := a(src).As16(), a(dst).As16()
	copy(p[8:24], s[:])
	copy(p[24:40], d[:])
	return p
}

func TestCheck(t *testing.T) {
	tab, problems := NewTable(local, []Peer{peerB}, 8285)
	if len(problems) != 0 {
		t.Fatal(problems)
	}
	good := ip4("10.244.2.5", "10.244.1.7")
	short := slices.Clone(good)
	binary.BigEndian.PutUint16(short[2:4], uint16(len(good)+1))
	badIHL := slices.Clone(good)
	badIHL[0] = 0x44
	for _, c := range []struct {
		name  string
		from  netip.Addr
		pkt   []byte
		mtu   int
		want  Reason
		wantN int
	}{
		{"ipv4 ok", nodeB, good, 1472, OK, len(good)},
		{"trailing bytes cut", nodeB, append(slices.Clone(good), 0, 0, 0), 1472, OK, len(good)},
		{"ipv6 ok", nodeB, ip6("fd00:244:2::5", "fd00:244:1::7", 8), 1472, OK, 48},
		{"v4-mapped sender", netip.AddrFrom16(nodeB.As16()), good, 1472, OK, len(good)},
		{"unknown sender", nodeA, good, 1472, DropUnknownSender, 0},
		{"empty", nodeB, nil, 1472, DropTruncated, 0},
		{"short ipv4 header", nodeB, good[:19], 1472, DropTruncated, 0},
		{"total length past the end", nodeB, short, 1472, DropTruncated, 0},
		{"short ipv6 header", nodeB, ip6("fd00:244:2::5", "fd00:244:1::7", 8)[:39], 1472, DropTruncated, 0},
		{"ipv6 payload past the end", nodeB, ip6("fd00:244:2::5", "fd00:244:1::7", 8)[:47], 1472, DropTruncated, 0},
		{"version 5", nodeB, append([]byte{0x50}, good[1:]...), 1472, DropNotIP, 0},
		{"ihl 4", nodeB, badIHL, 1472, DropNotIP, 0},
		{"spoofed ipv4 source", nodeB, ip4("10.244.3.5", "10.244.1.7"), 1472, DropSpoofedSource, 0},
		{"local source from a peer", nodeB, ip4("10.244.1.9", "10.244.1.7"), 1472, DropSpoofedSource, 0},
		{"spoofed ipv6 source", nodeB, ip6("fd00:244:3::5", "fd00:244:1::7", 0), 1472, DropSpoofedSource, 0},
		{"foreign destination", nodeB, ip4("10.244.2.5", "10.244.3.7"), 1472, DropForeignDestination, 0},
		{"destination outside pods", nodeB, ip4("10.244.2.5", "8.8.8.8"), 1472, DropForeignDestination, 0},
		{"oversize", nodeB, good, len(good) - 1, DropOversize, 0},
	} {
		n, r := tab.Check(c.from, c.pkt, c.mtu)
		if r != c.want || n != c.wantN {
			t.Errorf("%s: %d %s, want %d %s", c.name, n, r, c.wantN, c.want)
		}
	}
}

func TestTableLookupAndProblems(t *testing.T) {
	peers := []Peer{
		peerB,
		{Name: "c", UnderlayIP: a("192.168.77.13"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("10.245.0.0/16")}},
		{Name: "d", UnderlayIP: a("192.168.77.14"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.128/25")}},
		{Name: "e", UnderlayIP: nodeB, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.5.0/24")}},
		{Name: "f", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.6.0/24")}},
		{Name: "g", UnderlayIP: a("192.168.77.17"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/25")}},
	}
	tab, problems := NewTable(local, peers, 8285)
	want := []string{"peer e: underlay address 192.168.77.12 is also b's", "peer f: no underlay address",
		"peer g: pod CIDR 10.244.1.0/25 overlaps this node's", "peer d: pod CIDR 10.244.3.128/25 overlaps 10.244.3.0/24 of c"}
	for _, w := range want {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, w) }) {
			t.Errorf("problem %q not reported in %q", w, problems)
		}
	}
	if len(problems) != len(want) {
		t.Errorf("problems %q", problems)
	}
	for dst, wantPeer := range map[string]string{"10.244.2.9": "b", "fd00:244:2::1": "b", "10.244.3.200": "c",
		"10.245.7.1": "c", "10.244.1.5": "", "10.244.5.1": "", "10.244.6.1": "", "1.1.1.1": ""} {
		got := ""
		if i := tab.lookup(a(dst)); i >= 0 {
			got = tab.peers[i].name
		}
		if got != wantPeer {
			t.Errorf("lookup %s: %q, want %q", dst, got, wantPeer)
		}
	}
	if tab.peers[tab.lookup(a("10.244.2.9"))].dst.Port() != 8285 {
		t.Error("peer port not 8285")
	}
}

func TestHotPathDoesNotAllocate(t *testing.T) {
	tab, _ := NewTable(local, []Peer{peerB}, 8285)
	good := ip4("10.244.2.5", "10.244.1.7")
	if n := testing.AllocsPerRun(100, func() {
		if _, r := tab.Check(nodeB, good, 1472); r != OK {
			t.Fatal(r)
		}
		if tab.lookup(a("10.244.2.9")) < 0 {
			t.Fatal("no route")
		}
	}); n != 0 {
		t.Fatalf("%v allocations per packet", n)
	}
}
