// Package encapguard closes a node's encapsulation endpoint (the VXLAN UDP
// port, the udp backend's port, IP-in-IP) to everyone but
// the known nodes, and binds every encapsulated packet's outer sender to
// the pod addresses that sender owns:
//
//   - encapsulated packets arriving from a pod (in on the pod bridge) are
//     dropped, wherever they go: a pod must never emit encapsulation, or its
//     node's masquerade would make the frame look as if the node sent it;
//   - packets to the node's own port from an address that is not a known
//     node's underlay address are dropped ("unknown-sender");
//   - packets from a known node whose inner IPv4 destination lies outside
//     this node's own pod CIDRs are dropped ("foreign-inner-destination"):
//     a node sends encapsulation only to the node owning the pod it
//     carries a packet for, so anything else would use this node as a
//     relay (to its host, to another node's pods, to the world);
//   - packets from a known node are let through only when the inner IPv4
//     source lies inside that node's pod CIDRs; the rest are dropped
//     ("forged-inner-source").
//
// The checks run in the raw table's PREROUTING, before conntrack and before
// any filter-table rule, through one chain per encapsulation
// (WEFT-ENC-<KIND>) and one hash:ip set of the known nodes (weft-e-<kind>).
// The inner addresses are read at fixed offsets with the u32 match. The guard
// is declarative: Apply takes the whole desired state, reads the kernel
// back and rewrites only what differs, so calling it on every resync
// repairs drift and a restarted weftd adopts what it finds.
package encapguard

import (
	"cmp"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weftnet/weft/internal/names"
)

// DefaultPodIface is the pod bridge.
const DefaultPodIface = names.Bridge

// Drop reasons, as used in rule comments and the metric label.
const (
	ReasonFromPod       = "from-pod"
	ReasonUnknownSender = "unknown-sender"
	ReasonForgedInner   = "forged-inner-source"
	ReasonForeignDst    = "foreign-inner-destination"
)

// Reasons lists every drop reason.
func Reasons() []string {
	return []string{ReasonFromPod, ReasonUnknownSender, ReasonForgedInner, ReasonForeignDst}
}

// Encap describes one encapsulation: how to match its outer packets and
// where the inner IPv4 header's source address sits.
type Encap struct {
	// Kind names the chain and the set ("vxlan").
	Kind string
	// Proto is the outer IP protocol as iptables-save prints it ("udp").
	Proto string
	// Port is the outer UDP destination port (0 for protocols without one).
	Port int
	// InnerSrc is the offset of the inner IPv4 source address from the end
	// of the outer IPv4 header; the destination follows it.
	InnerSrc int
	// EtherType is the offset of the inner Ethernet type from the end of
	// the outer IPv4 header, 0 when the inner packet is bare IP.
	EtherType int
}

// VXLAN is VXLAN over UDP port: UDP 8 + VXLAN 8 + Ethernet 14 bytes, then
// the inner IPv4 header (source at +12).
func VXLAN(port int) Encap {
	return Encap{Kind: "vxlan", Proto: "udp", Port: port, InnerSrc: 8 + 8 + 14 + 12, EtherType: 8 + 8 + 12}
}

// UDP is the udp backend's encapsulation: the bare IP packet in a UDP
// datagram to port.
func UDP(port int) Encap { return Encap{Kind: "udp", Proto: "udp", Port: port, InnerSrc: 8 + 12} }

// IPIP is IP-in-IP (IP protocol 4): the inner IPv4 header right behind
// the outer one (source at +12). iptables-save names protocol 4 after
// /etc/protocols ("ipencap"; netbase, which Debian's iptables depends on).
func IPIP() Encap { return Encap{Kind: "ipip", Proto: "ipencap", InnerSrc: 12} }

// Peer is a known node: its underlay address and the pod CIDRs behind it.
type Peer struct {
	Name       string
	UnderlayIP netip.Addr
	PodCIDRs   []netip.Prefix
}

// Spec is the whole desired state of one encapsulation's guard.
type Spec struct {
	Encap Encap
	// PodIface is the pod bridge; encapsulation arriving on it is dropped.
	PodIface string
	Peers    []Peer
	// Local is this node's pod CIDRs: the inner IPv4 destination of an
	// admitted packet lies inside one of them. Without an IPv4 prefix the
	// destination is not checked.
	Local []netip.Prefix
}

// Guard converges the kernel to a Spec. IPTables is the real one, Fake
// the in-memory one.
type Guard interface {
	// Apply converges the guard of s.Encap.Kind to s and returns the
	// number of writes it made (0 when the kernel already matched).
	Apply(ctx context.Context, s Spec) (int, error)
	// Remove deletes the guard of kind (its jump, chain and set); a guard
	// that is not there is success.
	Remove(ctx context.Context, kind string) error
	// Drops returns the packets dropped so far, by reason.
	Drops(ctx context.Context, kind string) (map[string]uint64, error)
}

// Chain returns the raw-table chain of kind.
func Chain(kind string) string { return "WEFT-ENC-" + strings.ToUpper(kind) }

// Set returns the known-nodes ipset of kind.
func Set(kind string) string { return "weft-e-" + kind }

func tempSet(kind string) string { return "weft-e-" + kind + "-tmp" }

func comment(kind, what string) string { return "weft: " + kind + " " + what }

func dropComment(kind, reason string) string { return comment(kind, "drop "+reason) }

// jump is the rule in raw PREROUTING that sends the encapsulation's
// packets to the chain, in iptables-save's canonical form.
func jump(e Encap) []string {
	r := []string{"-p", e.Proto}
	if e.Port != 0 {
		r = append(r, "-m", e.Proto, "--dport", fmt.Sprint(e.Port))
	}
	return append(r, "-m", "comment", "--comment", comment(e.Kind, "encapsulation guard"), "-j", Chain(e.Kind))
}

// members returns the known nodes' underlay addresses, sorted, unique.
func members(s Spec) []string {
	var out []string
	for _, p := range s.Peers {
		if p.UnderlayIP.Is4() {
			out = append(out, p.UnderlayIP.String())
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// leafSize is how many per-peer rules one chain holds before the peers
// are split by source address range into a tree of chains, so a packet
// walks O(log peers) rules instead of one per peer.
const leafSize = 16

// chainRules is one chain of the guard with its rules.
type chainRules struct {
	name  string
	rules [][]string
}

// peerRule admits one peer's pod CIDR.
type peerRule struct {
	ip   netip.Addr
	rule []string
}

func cm(c string) []string { return []string{"-m", "comment", "--comment", c} }

// chains returns the guard's chains, the one jumped to from PREROUTING
// first, in iptables-save's canonical form so a read-back compares equal.
// Below the base chain every step is a goto, so a peer rule's RETURN goes
// straight back to PREROUTING.
func chains(s Spec) []chainRules {
	k := s.Encap.Kind
	base := chainRules{name: Chain(k), rules: [][]string{
		slices.Concat([]string{"-i", s.PodIface}, cm(dropComment(k, ReasonFromPod)), []string{"-j", "DROP"}),
		slices.Concat([]string{"-m", "addrtype", "!", "--dst-type", "LOCAL"}, cm(comment(k, "not for this node")), []string{"-j", "RETURN"}),
		slices.Concat([]string{"-m", "set", "!", "--match-set", Set(k), "src"}, cm(dropComment(k, ReasonUnknownSender)), []string{"-j", "DROP"}),
	}}
	if r := dstRule(s); r != nil {
		base.rules = append(base.rules, r)
	}
	prs := peerRules(s)
	if len(prs) <= leafSize {
		base.rules = append(base.rules, leaf(k, prs)...)
		return []chainRules{base}
	}
	out := []chainRules{base}
	root := tree(k, prs, &out)
	out[0].rules = append(out[0].rules, []string{"-g", root})
	return out
}

func peerRules(s Spec) []peerRule {
	peers := slices.Clone(s.Peers)
	slices.SortFunc(peers, func(a, b Peer) int { return a.UnderlayIP.Compare(b.UnderlayIP) })
	var out []peerRule
	for _, p := range peers {
		if !p.UnderlayIP.Is4() {
			continue
		}
		cidrs := slices.Clone(p.PodCIDRs)
		slices.SortFunc(cidrs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
		for _, c := range cidrs {
			if !c.Addr().Is4() {
				continue
			}
			out = append(out, peerRule{ip: p.UnderlayIP, rule: slices.Concat(
				[]string{"-s", p.UnderlayIP.String() + "/32", "-m", "u32", "--u32", u32Inner(s.Encap, c.Masked())},
				cm(comment(s.Encap.Kind, "from "+p.UnderlayIP.String()+" pods "+c.Masked().String())), []string{"-j", "RETURN"})})
		}
	}
	return out
}

// leaf is the peer rules followed by the drop of everything else.
func leaf(k string, prs []peerRule) [][]string {
	var out [][]string
	for _, r := range prs {
		out = append(out, r.rule)
	}
	return append(out, slices.Concat(cm(dropComment(k, ReasonForgedInner)), []string{"-j", "DROP"}))
}

// tree appends the chains for prs (sorted by peer) to out and returns the
// name of the one to go to: a leaf, or a split on the source range.
func tree(k string, prs []peerRule, out *[]chainRules) string {
	i := len(*out)
	name := fmt.Sprintf("%s-%d", Chain(k), i)
	*out = append(*out, chainRules{name: name})
	if len(prs) <= leafSize {
		(*out)[i].rules = leaf(k, prs)
		return name
	}
	mid := len(prs) / 2
	for mid < len(prs) && prs[mid].ip == prs[mid-1].ip {
		mid++ // one peer's CIDRs stay together
	}
	if mid == len(prs) {
		(*out)[i].rules = leaf(k, prs)
		return name
	}
	left := tree(k, prs[:mid], out)
	right := tree(k, prs[mid:], out)
	(*out)[i].rules = [][]string{
		{"-m", "iprange", "--src-range", prs[0].ip.String() + "-" + prs[mid-1].ip.String(), "-g", left},
		{"-g", right},
	}
	return name
}

// u32Base is the u32 location of the end of the outer IPv4 header.
const u32Base = "0x0>>0x16&0x3c@"

// u32Inner matches an inner IPv4 packet whose source lies in c: "from the
// end of the outer header (IHL*4), read 4 bytes at the offset", written as
// iptables-save prints it.
func u32Inner(e Encap, c netip.Prefix) string {
	var tests []string
	if e.EtherType != 0 {
		tests = append(tests, u32IPv4Frame(e))
	}
	addr := v4(c.Addr())
	mask := uint32(0)
	if c.Bits() > 0 {
		mask = ^uint32(0) << (32 - c.Bits())
	}
	tests = append(tests, fmt.Sprintf("%s%#x&%#x=%#x", u32Base, e.InnerSrc, mask, addr&mask))
	return strings.Join(tests, "&&")
}

// u32IPv4Frame tests that the inner Ethernet frame of e carries IPv4.
func u32IPv4Frame(e Encap) string { return fmt.Sprintf("%s%#x&0xffff=0x800", u32Base, e.EtherType-2) }

// v4 is the IPv4 address a as a number.
func v4(a netip.Addr) uint32 {
	b := a.As4()
	return binary.BigEndian.Uint32(b[:])
}

// u32Max is how many values (or ranges) one u32 test holds (xt_u32's
// XT_U32_MAXSIZE).
const u32Max = 10

// dstRule drops an inner IPv4 packet whose destination lies outside
// s.Local; nil when s.Local has no IPv4 prefix. With an inner Ethernet
// header only IPv4 frames are tested here (the rest meet the source check,
// which drops them).
func dstRule(s Spec) []string {
	rs := ranges(s.Local)
	if len(rs) == 0 {
		return nil
	}
	e := s.Encap
	var r []string
	if e.EtherType != 0 {
		r = []string{"-m", "u32", "--u32", u32IPv4Frame(e)}
	}
	vals := make([]string, len(rs))
	for i, x := range rs {
		vals[i] = fmt.Sprintf("%#x", x[0])
		if x[1] != x[0] {
			vals[i] += fmt.Sprintf(":%#x", x[1])
		}
	}
	r = append(r, "-m", "u32", "!", "--u32", fmt.Sprintf("%s%#x&0xffffffff=%s", u32Base, e.InnerSrc+4, strings.Join(vals, ",")))
	return slices.Concat(r, cm(dropComment(e.Kind, ReasonForeignDst)), []string{"-j", "DROP"})
}

// ranges returns the IPv4 prefixes of ps as sorted, merged address ranges
// [first, last], at most u32Max of them: beyond that the last range is
// widened to cover the rest (a node has one IPv4 pod CIDR, rarely a few).
func ranges(ps []netip.Prefix) [][2]uint32 {
	var rs [][2]uint32
	for _, p := range ps {
		if !p.Addr().Is4() || !p.IsValid() {
			continue
		}
		lo := v4(p.Masked().Addr())
		rs = append(rs, [2]uint32{lo, lo | ^uint32(0)>>p.Bits()})
	}
	if len(rs) == 0 {
		return nil
	}
	slices.SortFunc(rs, func(a, b [2]uint32) int { return cmp.Compare(a[0], b[0]) })
	out := rs[:1]
	for _, r := range rs[1:] {
		last := &out[len(out)-1]
		if uint64(r[0]) <= uint64(last[1])+1 {
			last[1] = max(last[1], r[1])
			continue
		}
		out = append(out, r)
	}
	if len(out) > u32Max {
		out[u32Max-1][1] = max(out[u32Max-1][1], out[len(out)-1][1])
		out = out[:u32Max]
	}
	return out
}
