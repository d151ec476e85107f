package encapguard

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// packet is what the tracer knows of an outer packet: where it came in,
// its outer source and its bytes from the outer IPv4 header on.
type packet struct {
	fromPod bool
	src     netip.Addr
	bytes   []byte
}

func vxlanPacket(t *testing.T, sender, inner string) packet {
	t.Helper()
	return vxlanPacketTo(t, sender, inner, "10.244.9.9")
}

func vxlanPacketTo(t *testing.T, sender, inner, dst string) packet {
	t.Helper()
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	f := testutil.VXLANFrame{VNI: 1, DstMAC: mac, SrcMAC: mac, Src: netip.MustParseAddr(inner), Dst: netip.MustParseAddr(dst), SrcPort: 1, DstPort: 2}
	outer := make([]byte, 20+8)
	outer[0] = 0x45
	return packet{src: netip.MustParseAddr(sender), bytes: append(outer, f.Bytes()...)}
}

// u32 evaluates the expressions u32Inner writes against p.
func u32(t *testing.T, expr string, p []byte) bool {
	t.Helper()
	for _, test := range strings.Split(expr, "&&") {
		var off, mask, val uint64
		rest, ok := strings.CutPrefix(test, "0x0>>0x16&0x3c@")
		if !ok {
			t.Fatalf("u32 form %q", test)
		}
		o, mv, _ := strings.Cut(rest, "&")
		m, vs, _ := strings.Cut(mv, "=")
		off, _ = strconv.ParseUint(o, 0, 32)
		mask, _ = strconv.ParseUint(m, 0, 32)
		at := int(p[0]&0x0f)*4 + int(off)
		if at+4 > len(p) {
			return false
		}
		got, in := uint64(binary.BigEndian.Uint32(p[at:at+4]))&mask, false
		for _, v := range strings.Split(vs, ",") {
			lo, hi, isRange := strings.Cut(v, ":")
			if !isRange {
				hi = lo
			}
			val, _ = strconv.ParseUint(lo, 0, 32)
			top, _ := strconv.ParseUint(hi, 0, 32)
			in = in || (got >= val && got <= top)
		}
		if !in {
			return false
		}
	}
	return true
}

// trace walks the rendered chains for p and returns the verdict, "RETURN"
// (back to PREROUTING: admitted) or the comment of the DROP, and the number
// of rules evaluated.
func trace(t *testing.T, s Spec, p packet) (string, int) {
	t.Helper()
	cs := map[string][][]string{}
	for _, c := range chains(s) {
		cs[c.name] = c.rules
	}
	members := members(s)
	chain, n := Chain(s.Encap.Kind), 0
hops:
	for range 64 {
	rules:
		for _, r := range cs[chain] {
			n++
			for i := 0; i < len(r); i++ {
				switch {
				case r[i] == "-i" && !p.fromPod:
					continue rules
				case r[i] == "--dst-type" && r[i-1] == "!": // every traced packet is for this node
					continue rules
				case r[i] == "--match-set" && r[i-1] == "!" && slices.Contains(members, p.src.String()):
					continue rules
				case r[i] == "-s" && r[i+1] != p.src.String()+"/32":
					continue rules
				case r[i] == "--u32" && u32(t, r[i+1], p.bytes) == (r[i-1] == "!"):
					continue rules
				case r[i] == "--src-range":
					lo, hi, _ := strings.Cut(r[i+1], "-")
					if p.src.Less(netip.MustParseAddr(lo)) || netip.MustParseAddr(hi).Less(p.src) {
						continue rules
					}
				}
			}
			switch v := r[len(r)-1]; r[len(r)-2] {
			case "-g":
				chain = v
				continue hops
			case "-j":
				if v == "DROP" {
					return fmt.Sprint(r[slices.Index(r, "--comment")+1]), n
				}
				return v, n
			}
		}
		t.Fatalf("chain %s ended without a verdict", chain)
	}
	t.Fatal("no verdict")
	return "", n
}

// TestTreeAdmitsExactlyPeers renders the guard for 300 peers (a tree of
// chains) and traces packets through it: each peer passes with its own
// pod source only, strangers and pods are dropped, and no packet walks
// more than a few dozen rules.
func TestTreeAdmitsExactlyPeers(t *testing.T) {
	var peers []Peer
	for i := range 300 {
		peers = append(peers, Peer{UnderlayIP: netip.AddrFrom4([4]byte{172, 18, byte(i / 200), byte(10 + i%200)}),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i/250), byte(i % 250), 0}), 24)}})
	}
	s := spec(8472, peers...)
	if n := len(chains(s)); n < 3 {
		t.Fatalf("300 peers in %d chains", n)
	}
	maxRules := 0
	for i, p := range peers {
		own := p.PodCIDRs[0].Addr().Next().String()
		other := peers[(i+1)%len(peers)].PodCIDRs[0].Addr().Next().String()
		v, n := trace(t, s, vxlanPacket(t, p.UnderlayIP.String(), own))
		if v != "RETURN" {
			t.Fatalf("peer %s with its own pod source %s: %s", p.UnderlayIP, own, v)
		}
		maxRules = max(maxRules, n)
		if v, _ := trace(t, s, vxlanPacket(t, p.UnderlayIP.String(), other)); v != dropComment("vxlan", ReasonForgedInner) {
			t.Fatalf("peer %s forging %s: %s", p.UnderlayIP, other, v)
		}
	}
	if maxRules > 3+2*10+leafSize+1 {
		t.Errorf("a packet walks up to %d rules", maxRules)
	}
	t.Logf("300 peers: at most %d rules per packet", maxRules)
	if v, _ := trace(t, s, vxlanPacket(t, "172.18.9.9", "10.100.0.1")); v != dropComment("vxlan", ReasonUnknownSender) {
		t.Fatalf("stranger: %s", v)
	}
	// With this node's pod CIDRs: a peer's packet passes for a local pod
	// only (non-IPv4 frames still meet the source check).
	s.Local = []netip.Prefix{netip.MustParsePrefix("10.244.9.0/24"), netip.MustParsePrefix("10.245.0.0/16")}
	p := peers[7]
	own := p.PodCIDRs[0].Addr().Next().String()
	for dst, want := range map[string]string{
		"10.244.9.9": "RETURN", "10.245.200.1": "RETURN",
		"10.244.8.255": dropComment("vxlan", ReasonForeignDst), "10.246.0.0": dropComment("vxlan", ReasonForeignDst),
		peers[8].PodCIDRs[0].Addr().Next().String(): dropComment("vxlan", ReasonForeignDst),
		p.UnderlayIP.String():                       dropComment("vxlan", ReasonForeignDst),
	} {
		if v, _ := trace(t, s, vxlanPacketTo(t, p.UnderlayIP.String(), own, dst)); v != want {
			t.Fatalf("peer %s to %s: %s, want %s", p.UnderlayIP, dst, v, want)
		}
	}
	arp := vxlanPacketTo(t, p.UnderlayIP.String(), own, "10.244.9.9")
	arp.bytes[20+8+8+12], arp.bytes[20+8+8+13] = 0x08, 0x06
	if v, _ := trace(t, s, arp); v != dropComment("vxlan", ReasonForgedInner) {
		t.Fatalf("an ARP frame: %s", v)
	}
	pod := vxlanPacket(t, "10.100.0.5", "10.100.0.5")
	pod.fromPod = true
	if v, _ := trace(t, s, pod); v != dropComment("vxlan", ReasonFromPod) {
		t.Fatalf("from a pod: %s", v)
	}
}
