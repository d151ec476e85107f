package rules

import (
	"fmt"
	"net/netip"
	"strings"
)

// Packet is what the kernel knows about a packet when it reaches a hook.
type Packet struct {
	Src, Dst          netip.Addr
	Proto             string // tcp, udp, sctp, icmp
	DPort             uint16
	InIface, OutIface string
	// PhysIn/PhysOut are the bridge ports br_netfilter records; PhysOut is
	// only known for bridged packets. Bridged is --physdev-is-bridged.
	PhysIn, PhysOut string
	Bridged         bool
	CTState         string // NEW (default), ESTABLISHED, RELATED, INVALID
	Mark            uint32
	// NotSYN marks a TCP segment that is not a connection's opening SYN
	// (an ACK, data, FIN): false, the default, is a SYN.
	NotSYN bool
}

// Verdict is the outcome of a trace.
type Verdict int

// Verdicts. Pass means our rules neither accepted nor dropped the packet: it
// continues through the built-in chain (other tools' rules, its policy).
const (
	Pass Verdict = iota
	Accepted
	Dropped
)

func (v Verdict) String() string {
	return [...]string{"pass", "accept", "drop"}[v]
}

// Hit is one rule that matched on the way.
type Hit struct {
	Chain   string
	Index   int
	Rule    string
	Comment string // the rule's own comment (without the hash)
}

// TraceResult is the verdict and the rules that matched, in order.
type TraceResult struct {
	Verdict Verdict
	Hits    []Hit
	// Evaluated counts the rules the packet was tested against on the way:
	// the per-packet cost of the walk.
	Evaluated int
}

// Allowed reports whether the packet gets through our rules.
func (t TraceResult) Allowed() bool { return t.Verdict != Dropped }

// Spoofed reports whether the anti-spoofing check dropped the packet: it
// came in on a local pod's veth with a source that is not that pod's.
func (t TraceResult) Spoofed() bool {
	if t.Verdict != Dropped || len(t.Hits) == 0 {
		return false
	}
	h := t.Hits[len(t.Hits)-1]
	return h.Chain == ChainSpoof && h.Comment == SpoofComment
}

func (t TraceResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s via", t.Verdict)
	for _, h := range t.Hits {
		fmt.Fprintf(&b, "\n  %s[%d] %s", h.Chain, h.Index, h.Rule)
	}
	return b.String()
}

// Trace walks the packet through the rendered rules from the built-in chain
// hook (e.g. "FORWARD"), with ipset membership from the State. A packet
// from a local pod (InIface the bridge) must carry the pod's veth in PhysIn,
// as br_netfilter records it for bridged and routed packets alike: the
// source-address check and the egress dispatch match on it, and Src is
// checked against that veth's addresses before conntrack state counts.
func (s *State) Trace(hook string, p Packet) TraceResult {
	return s.Tracer(hook).Trace(p)
}

// Tracer indexes the State's chains and sets once, for many traces from
// one hook (e.g. every conntrack entry after a policy change), and
// remembers set memberships it looked up. Not safe for concurrent use.
type Tracer struct {
	hook   string
	chains map[string][]Rule
	sets   map[string]*IPSet
	member map[setAddr]bool
	// VerdictOnly skips recording the rules that matched (rendering each
	// costs a hash): for callers that only need the verdict.
	VerdictOnly bool
}

// Tracer returns a Tracer over the State as it is now, from hook.
func (s *State) Tracer(hook string) *Tracer {
	chains := make(map[string][]Rule, len(s.Chains)+1)
	for _, c := range s.Chains {
		chains[c.Name] = c.Rules
	}
	var jumps []Rule // a fresh slice: never append to a chain of the State
	for _, j := range s.Jumps {
		if j.Builtin == hook {
			jumps = append(jumps, j.Rule)
		}
	}
	if jumps != nil {
		chains[hook] = jumps
	}
	sets := make(map[string]*IPSet, len(s.IPSets))
	for i := range s.IPSets {
		sets[s.IPSets[i].Name] = &s.IPSets[i]
	}
	return &Tracer{hook: hook, chains: chains, sets: sets, member: map[setAddr]bool{}}
}

// Trace walks the packet through the rules, like State.Trace.
func (t *Tracer) Trace(p Packet) TraceResult {
	if p.CTState == "" {
		p.CTState = "NEW"
	}
	hook, chains := t.hook, t.chains
	type frame struct {
		chain string
		next  int
	}
	var res TraceResult
	stack := []frame{{chain: hook}}
	for steps := 0; len(stack) > 0; steps++ {
		if steps > 100000 {
			res.Verdict = Dropped
			res.Hits = append(res.Hits, Hit{Chain: "?", Rule: "trace loop"})
			return res
		}
		top := &stack[len(stack)-1]
		rules := chains[top.chain]
		if top.next >= len(rules) {
			stack = stack[:len(stack)-1] // fall off: return to caller
			continue
		}
		i := top.next
		top.next++
		ru := rules[i]
		res.Evaluated++
		if !matches(ru.Match, &p, t.inSet) {
			continue
		}
		if !t.VerdictOnly {
			res.Hits = append(res.Hits, Hit{Chain: top.chain, Index: i, Rule: ru.Text(), Comment: ru.Comment})
		}
		switch ru.Action.Verb {
		case Accept:
			res.Verdict = Accepted
			return res
		case Drop:
			res.Verdict = Dropped
			return res
		case Return:
			stack = stack[:len(stack)-1]
			if len(stack) == 0 { // RETURN in a built-in chain: its policy
				return res
			}
		case Jump:
			stack = append(stack, frame{chain: ru.Action.Target})
		case Goto:
			stack[len(stack)-1] = frame{chain: ru.Action.Target}
		case SetMark:
			p.Mark = p.Mark&^ru.Action.Mask | ru.Action.Mark
		}
	}
	return res
}

type setAddr struct {
	set  string
	addr netip.Addr
}

// inSet reports whether a is a member of the set called name.
func (t *Tracer) inSet(name string, a netip.Addr) bool {
	k := setAddr{name, a}
	v, ok := t.member[k]
	if !ok {
		v = inSet(t.sets[name], a)
		t.member[k] = v
	}
	return v
}

func matches(m Match, p *Packet, in func(set string, a netip.Addr) bool) bool {
	if !ifaceMatches(m.InIface, p.InIface) || !ifaceMatches(m.OutIface, p.OutIface) {
		return false
	}
	if m.Src.IsValid() && !m.Src.Contains(p.Src) || m.Dst.IsValid() && !m.Dst.Contains(p.Dst) {
		return false
	}
	if m.Proto != "" && m.Proto != p.Proto {
		return false
	}
	if !physdevMatches(m, p) {
		return false
	}
	if m.SrcSet != "" && !in(m.SrcSet, p.Src) || m.DstSet != "" && !in(m.DstSet, p.Dst) {
		return false
	}
	if m.Proto != "" && m.DPortMin != 0 {
		hi := m.DPortMax
		if hi < m.DPortMin {
			hi = m.DPortMin
		}
		if p.DPort < m.DPortMin || p.DPort > hi {
			return false
		}
	}
	if m.CTStates != "" {
		ok := false
		for _, s := range strings.Split(m.CTStates, ",") {
			ok = ok || s == p.CTState
		}
		if !ok {
			return false
		}
	}
	if m.MarkMask != 0 && p.Mark&m.MarkMask != m.Mark {
		return false
	}
	if m.NotSYN && (p.Proto != "tcp" || !p.NotSYN) {
		return false
	}
	return true
}

// physdevMatches follows xt_physdev: without bridge info only inverted
// options can match.
func physdevMatches(m Match, p *Packet) bool {
	if m.PhysIn == "" && m.PhysOut == "" && m.Bridged == Any {
		return true
	}
	if p.PhysIn == "" && p.PhysOut == "" && !p.Bridged {
		return m.PhysIn == "" && m.PhysOut == "" && m.Bridged != Yes
	}
	if m.Bridged == Yes && !p.Bridged || m.Bridged == No && p.Bridged {
		return false
	}
	return ifaceMatches(m.PhysIn, p.PhysIn) && ifaceMatches(m.PhysOut, p.PhysOut)
}

// ifaceMatches follows iptables' interface names: "" matches any, a
// trailing "+" matches every name with that prefix.
func ifaceMatches(pattern, name string) bool {
	if pattern == "" {
		return true
	}
	if prefix, ok := strings.CutSuffix(pattern, "+"); ok {
		return strings.HasPrefix(name, prefix)
	}
	return pattern == name
}

// inSet follows ipset: hash:ip is exact; hash:net picks the most specific
// containing prefix, and a nomatch entry there means not a member.
func inSet(s *IPSet, a netip.Addr) bool {
	if s == nil {
		return false
	}
	best, bestNomatch := -1, false
	for _, m := range s.Members {
		f := strings.Fields(m)
		if len(f) == 0 {
			continue
		}
		if s.Type == HashIP {
			if x, err := netip.ParseAddr(f[0]); err == nil && x == a {
				return true
			}
			continue
		}
		pfx, err := netip.ParsePrefix(f[0])
		if err != nil {
			if x, xerr := netip.ParseAddr(f[0]); xerr == nil {
				pfx = netip.PrefixFrom(x, x.BitLen())
			} else {
				continue
			}
		}
		if pfx.Contains(a) && pfx.Bits() > best {
			best, bestNomatch = pfx.Bits(), len(f) > 1 && f[1] == "nomatch"
		}
	}
	return best >= 0 && !bestNomatch
}
