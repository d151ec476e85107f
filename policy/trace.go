package policy

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
	if p.CTState == "" {
		p.CTState = "NEW"
	}
	chains := map[string][]Rule{}
	for _, c := range s.Chains {
		chains[c.Name] = c.Rules
	}
	for _, j := range s.Jumps {
		if j.Builtin == hook {
			chains[hook] = append(chains[hook], j.Rule)
		}
	}
	sets := map[string]*IPSet{}
	for i := range s.IPSets {
		sets[s.IPSets[i].Name] = &s.IPSets[i]
	}
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
		if !matches(ru.Match, &p, sets) {
			continue
		}
		res.Hits = append(res.Hits, Hit{Chain: top.chain, Index: i, Rule: ru.Text(), Comment: ru.Comment})
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

func matches(m Match, p *Packet, sets map[string]*IPSet) bool {
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
	if m.SrcSet != "" && !inSet(sets[m.SrcSet], p.Src) || m.DstSet != "" && !inSet(sets[m.DstSet], p.Dst) {
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
