package rules

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"net/netip"
	"sort"
)

// The source-address check (WEFT-POL-SRC) is walked by every packet a
// local pod sends (established flows included), so its cost per packet
// must not grow with the node's pod count the way one rule per endpoint
// does (110 pods: up to 110 rules per packet).
//
// An ipset of (address, bridge port) pairs would make it one lookup, but the
// iptables set match cannot look up a bridge port: hash:net,iface members
// written "IP,physdev:PORT" are only found when the match passes the
// kernel's physdev flag, which no iptables option sets (verified on
// iptables-legacy and -nft 1.8.9 here: such a set never matches, and the
// same set with the bridge's name does). So the check is a prefix tree on
// the source address instead: a chain holding at most srcLeafMax leaf
// rules is walked as is, a bigger one branches on the next 4 bits of the
// addresses (`-s 10.244.1.16/28 -g ...`) into a chain per branch. Branch
// rules test only the address, which both backends compare natively
// before any match extension runs; a branch on veth names would call the
// physdev match in every branch rule, and measured slower than the list
// (BENCHMARKS.md). With 110 pods a packet is tested against at most ~20
// rules. A leaf rule (address and veth) RETURNs: the source is the port's
// own; anything else goes to WEFT-POL-SPOOF, whose one DROP rule counts the
// forged packets.
const (
	srcLeafMax = 8
	srcFanout  = 4 // address bits per branch level: up to 16 branches
)

// srcLeaf is one (veth, address) pair the check accepts.
type srcLeaf struct {
	veth, who string
	addr      netip.Addr
}

// sourceCheck renders WEFT-POL-SRC, its branch chains and WEFT-POL-SPOOF
// for the local endpoints.
func sourceCheck(locals []*localEP) map[string][]Rule {
	var leaves []srcLeaf
	for _, l := range locals {
		who := "endpoint " + l.ep.PodNamespace + "/" + l.ep.PodName
		for _, a := range l.ips {
			if a.Is4() {
				leaves = append(leaves, srcLeaf{veth: l.ep.HostVeth, who: who, addr: a})
			}
		}
	}
	sort.SliceStable(leaves, func(i, j int) bool { return leaves[i].addr.Less(leaves[j].addr) })
	out := map[string][]Rule{
		// A veth without a record has no address here: its packets are
		// dropped as well (WEFT-POL-FROM would drop them, but only after
		// conntrack, and INPUT has no such chain).
		ChainSpoof: {{Action: Action{Verb: Drop}, Comment: SpoofComment}},
	}
	srcTree(out, ChainSource, leaves)
	return out
}

// srcTree renders the chain name for leaves (sorted by address) into out,
// and its branch chains, recursively.
func srcTree(out map[string][]Rule, name string, leaves []srcLeaf) {
	var rules []Rule
	common := commonBits(leaves)
	if len(leaves) <= srcLeafMax || common == 32 {
		rules = leafRules(leaves)
	} else {
		next := min(common+srcFanout, 32)
		for i := 0; i < len(leaves); {
			pfx := netip.PrefixFrom(leaves[i].addr, next).Masked()
			j := i + 1
			for j < len(leaves) && pfx.Contains(leaves[j].addr) {
				j++
			}
			if group := leaves[i:j]; len(group) == 1 {
				rules = append(rules, leafRules(group)...) // no branch for one
			} else {
				a4 := pfx.Addr().As4()
				branch := fmt.Sprintf("WEFT-POL-SRC-%x-%d", a4[:], next)
				rules = append(rules, Rule{Match: Match{Src: pfx}, Action: Action{Verb: Goto, Target: branch},
					Comment: "sources in " + pfx.String()})
				srcTree(out, branch, group)
			}
			i = j
		}
	}
	out[name] = append(rules, Rule{Action: Action{Verb: Goto, Target: ChainSpoof}, Comment: "not an endpoint's own source"})
}

func leafRules(leaves []srcLeaf) []Rule {
	rules := make([]Rule, 0, len(leaves))
	for _, l := range leaves {
		rules = append(rules, Rule{Match: Match{PhysIn: l.veth, Src: netip.PrefixFrom(l.addr, 32)},
			Action: Action{Verb: Return}, Comment: l.who})
	}
	return rules
}

// commonBits is the length of the longest prefix shared by every leaf's
// address (leaves sorted: the first and last decide), 0 without leaves.
func commonBits(leaves []srcLeaf) int {
	if len(leaves) == 0 {
		return 0
	}
	a, b := leaves[0].addr.As4(), leaves[len(leaves)-1].addr.As4()
	x := binary.BigEndian.Uint32(a[:]) ^ binary.BigEndian.Uint32(b[:])
	return bits.LeadingZeros32(x)
}
