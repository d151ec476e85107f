package rules

import (
	"net/netip"
	"strings"
)

// dispatch renders the fixed chains that steer traffic of local endpoints
// into their per-endpoint chains, and the jumps from FORWARD and INPUT.
//
// Traffic from a local pod enters the node through its veth, a bridge port:
// with br_netfilter, bridged and routed packets alike carry the port in
// --physdev-in. Traffic to a local pod leaves through weft0: bridged packets
// carry the port in --physdev-out; routed ones do not know it yet at FORWARD
// time, so they are steered by destination address.
//
// Before anything can accept a packet from a local pod (conntrack included:
// a forged packet must not ride an existing flow), WEFT-POL-SRC checks that
// its source address is one of the addresses of the veth it came in on, and
// drops it otherwise. That holds for every endpoint, selected by a policy or
// not, and for packets to the node itself (INPUT) as for forwarded ones;
// the DROP rule in WEFT-POL-SPOOF counts the forged packets.
func (r *renderer) dispatch(st *State, locals []*localEP) {
	br := r.cfg.Bridge
	m := r.cfg.AllowMark
	st.Jumps = []BuiltinJump{
		{Builtin: "FORWARD", Rule: Rule{Action: Action{Verb: Jump, Target: ChainForward}, Comment: JumpComment}},
		{Builtin: "INPUT", Rule: Rule{Action: Action{Verb: Jump, Target: ChainInput}, Comment: JumpComment}},
	}
	// Packets from local pods to the node itself (node services, hostNetwork
	// pods) get the same source check; the rest of INPUT is not ours.
	r.chains[ChainInput] = []Rule{
		{Match: Match{InIface: br}, Action: Action{Verb: Jump, Target: ChainSource}, Comment: "source address of local pods"},
	}
	r.chains[ChainForward] = []Rule{
		{Match: Match{InIface: br}, Action: Action{Verb: Jump, Target: ChainSource}, Comment: "source address of local pods"},
		{Match: Match{InIface: br}, Action: Action{Verb: Goto, Target: ChainCheck}, Comment: "from local pods"},
		{Match: Match{OutIface: br}, Action: Action{Verb: Goto, Target: ChainCheck}, Comment: "to local pods"},
	}
	// Weft's verdicts compose with the other rules of FORWARD (kube-proxy's
	// above all): a packet policy allows is not accepted here but RETURNs,
	// so it still meets kube-proxy's INVALID drop, its firewall chain
	// (loadBalancerSourceRanges) and its REJECT of Services without
	// endpoints; masq's WEFT-FWD-ACCEPT, appended at the end of FORWARD, is
	// the final accept. Only drops are final here, and the jump to
	// WEFT-POL-FWD stays first in FORWARD, so the source-address check and
	// policy run before anyone's conntrack or mark based accept.
	r.chains[ChainCheck] = []Rule{
		{Match: Match{CTStates: "RELATED,ESTABLISHED"}, Action: Action{Verb: Return}, Comment: "replies and related"},
		{Match: Match{CTStates: "INVALID"}, Action: Action{Verb: Drop}, Comment: "invalid"},
		// The rest of a connection whose entry is gone (deleted when a policy
		// denied it) must not open a new one, in either direction.
		{Match: Match{Proto: "tcp", NotSYN: true, CTStates: "NEW"}, Action: Action{Verb: Drop}, Comment: "new TCP without SYN"},
		{Match: Match{InIface: br}, Action: Action{Verb: Jump, Target: ChainFrom}, Comment: "egress of the source pod"},
		{Match: Match{OutIface: br}, Action: Action{Verb: Jump, Target: ChainTo}, Comment: "ingress of the destination pod"},
		{Action: Action{Verb: SetMark, Mark: 0, Mask: m}, Comment: "clear policy mark"},
		{Action: Action{Verb: Return}, Comment: "allowed by policy"},
	}
	var sig strings.Builder // the per-endpoint dispatch depends only on this
	for _, l := range locals {
		sig.WriteString(l.ep.HostVeth + "|" + l.ep.PodNamespace + "/" + l.ep.PodName)
		for _, a := range l.ips {
			sig.WriteString("|" + a.String())
		}
		sig.WriteByte(';')
	}
	if d := r.rr.dispatch; d != nil && d.sig == sig.String() && d.bridge == br {
		for name, rules := range d.src {
			r.chains[name] = rules
		}
		r.chains[ChainFrom], r.chains[ChainTo] = d.from, d.to
		return
	}
	var from, to, toRouted []Rule
	for _, l := range locals {
		v := l.ep.HostVeth
		who := "endpoint " + l.ep.PodNamespace + "/" + l.ep.PodName
		from = append(from, Rule{Match: Match{PhysIn: v}, Action: Action{Verb: Goto, Target: FromChain(v)}, Comment: who})
		to = append(to, Rule{Match: Match{PhysOut: v, Bridged: Yes}, Action: Action{Verb: Goto, Target: ToChain(v)}, Comment: who})
		for _, a := range l.ips {
			if a.Is4() {
				toRouted = append(toRouted, Rule{Match: Match{Bridged: No, Dst: netip.PrefixFrom(a, 32)},
					Action: Action{Verb: Goto, Target: ToChain(v)}, Comment: who + " (routed)"})
			}
		}
	}
	src := sourceCheck(locals)
	from = append(from, Rule{Action: Action{Verb: Drop}, Comment: "unknown local endpoint"})
	to = append(append(to, toRouted...), Rule{Action: Action{Verb: Drop}, Comment: "unknown local endpoint"})
	for name, rules := range src {
		r.chains[name] = rules
	}
	r.chains[ChainFrom] = from
	r.chains[ChainTo] = to
	r.rr.dispatch = &cachedDispatch{sig: sig.String(), bridge: br, src: src, from: from, to: to}
}

// cachedDispatch is the last render's per-endpoint dispatch chains, reused
// while the endpoints (veth, pod, addresses) are the same.
type cachedDispatch struct {
	sig, bridge string
	src         map[string][]Rule // the source check's chains (srccheck.go)
	from, to    []Rule
}
