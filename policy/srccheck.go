package policy

import (
	"net/netip"
	"strings"
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
// the veth name instead, the way Calico dispatches on interface names:
// a chain holding at most srcLeafMax leaf rules is walked as is, a bigger
// one branches on the next character of the names (`--physdev-in wv3+`)
// into a chain per branch. With the plugin's hex names, 110 endpoints walk
// at most 16 branch rules and a short leaf. A leaf rule RETURNs (the
// source is the port's own); anything else goes to WEFT-POL-SPOOF, whose
// one DROP rule counts the forged packets.
const srcLeafMax = 8

// srcLeaf is one (veth, address) pair the check accepts.
type srcLeaf struct {
	veth, who string
	addr      netip.Addr
}

// sourceCheck renders WEFT-POL-SRC, its branch chains and WEFT-POL-SPOOF
// for the local endpoints (sorted by veth).
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
	out := map[string][]Rule{
		// A veth without a record has no address here: its packets are
		// dropped as well (WEFT-POL-FROM would drop them, but only after
		// conntrack, and INPUT has no such chain).
		ChainSpoof: {{Action: Action{Verb: Drop}, Comment: SpoofComment}},
	}
	srcTree(out, ChainSource, "", leaves)
	return out
}

// srcTree renders the chain name for leaves, whose veths all start with
// prefix, into out (and its branch chains, recursively).
func srcTree(out map[string][]Rule, name, prefix string, leaves []srcLeaf) {
	var rules []Rule
	if len(leaves) <= srcLeafMax {
		rules = leafRules(leaves)
	} else {
		prefix = commonPrefix(leaves, prefix)
		for i := 0; i < len(leaves); {
			j := i + 1
			if len(leaves[i].veth) == len(prefix) { // the prefix is this veth's whole name
				for j < len(leaves) && leaves[j].veth == leaves[i].veth {
					j++
				}
				rules = append(rules, leafRules(leaves[i:j])...)
				i = j
				continue
			}
			c := leaves[i].veth[len(prefix)]
			for j < len(leaves) && len(leaves[j].veth) > len(prefix) && leaves[j].veth[len(prefix)] == c {
				j++
			}
			if group := leaves[i:j]; group[0].veth == group[len(group)-1].veth {
				rules = append(rules, leafRules(group)...) // one veth: no branch
			} else {
				sub := prefix + string(c)
				branch := chainName("WEFT-POL-SRC-", sub, "")
				rules = append(rules, Rule{Match: Match{PhysIn: sub + "+"}, Action: Action{Verb: Goto, Target: branch},
					Comment: "veths " + sub + "*"})
				srcTree(out, branch, sub, group)
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

// commonPrefix extends prefix to the longest prefix of every leaf's veth
// (leaves are sorted by veth).
func commonPrefix(leaves []srcLeaf, prefix string) string {
	first, last := leaves[0].veth, leaves[len(leaves)-1].veth
	n := len(prefix)
	for n < len(first) && n < len(last) && first[n] == last[n] {
		n++
	}
	if !strings.HasPrefix(first, prefix) {
		return prefix
	}
	return first[:n]
}
