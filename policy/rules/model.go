// Package rules is the pure NetworkPolicy renderer and its packet-path
// tracer: (policies, pods, namespaces, this node's endpoint records) in,
// the desired WEFT- chains and weft- ipsets (State) out, and a tracer that
// walks a State the way the kernel walks the loaded rules. It imports
// nothing that does I/O (TestRendererIsPure enforces it); the controller,
// the kernel writer and everything else with side effects live in package
// policy.
package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/weftnet/weft/internal/iptables/syntax"
)

// Verb is what a rule does when it matches.
type Verb int

// Rule verbs.
const (
	Accept Verb = iota
	Drop
	Return
	Jump    // -j Target, come back afterwards
	Goto    // -g Target, return goes to our caller's caller
	SetMark // -j MARK --set-xmark Mark/Mask, continue
)

// Action is a rule's target.
type Action struct {
	Verb   Verb
	Target string
	Mark   uint32
	Mask   uint32
}

// Tri is a three-valued flag: don't care, must, must not.
type Tri int8

// Tri values.
const (
	Any Tri = 0
	Yes Tri = 1
	No  Tri = -1
)

// Match is the conjunction of a rule's conditions; zero fields don't care.
type Match struct {
	InIface, OutIface string
	PhysIn, PhysOut   string
	Bridged           Tri
	Src, Dst          netip.Prefix
	SrcSet, DstSet    string
	Proto             string // tcp, udp, sctp
	DPortMin          uint16
	DPortMax          uint16
	CTStates          string // comma-separated, e.g. RELATED,ESTABLISHED
	Mark, MarkMask    uint32
	// NotSYN (with Proto tcp) matches a segment that is not a connection's
	// opening SYN: ! --tcp-flags FIN,SYN,RST,ACK SYN (iptables ! --syn).
	NotSYN bool
}

// Rule is one iptables rule in structured form.
type Rule struct {
	Match   Match
	Action  Action
	Comment string // who owns it (policy ns/name, endpoint, ...)
}

// Chain is a WEFT- chain with its rules in order.
type Chain struct {
	Name  string
	Rules []Rule
}

// BuiltinJump is a rule we insert at the top of a built-in chain.
type BuiltinJump struct {
	Builtin string
	Rule    Rule
}

// SetType is an ipset type.
type SetType string

// The ipset types used.
const (
	HashIP  SetType = "hash:ip"
	HashNet SetType = "hash:net"
)

// IPSet is a weft- ipset. Members are canonical strings: "10.0.0.1" for
// hash:ip, "10.0.0.0/8" or "10.1.0.0/16 nomatch" for hash:net.
type IPSet struct {
	Name    string
	Type    SetType
	Members []string
	Owner   string
}

// EndpointStatus says how a local endpoint was rendered.
type EndpointStatus struct {
	HostVeth  string
	Namespace string
	Name      string
	UID       string
	Ready     bool // the pod is known and its policies are rendered
}

// State is the desired dataplane: everything the Writer programs.
type State struct {
	Chains    []Chain
	Jumps     []BuiltinJump
	IPSets    []IPSet
	Endpoints []EndpointStatus
	Errors    []error // policies that failed to render (their pods fail closed)
}

// Chain returns the chain named name, or nil.
func (s *State) Chain(name string) *Chain {
	for i := range s.Chains {
		if s.Chains[i].Name == name {
			return &s.Chains[i]
		}
	}
	return nil
}

// Set returns the ipset named name, or nil.
func (s *State) Set(name string) *IPSet {
	for i := range s.IPSets {
		if s.IPSets[i].Name == name {
			return &s.IPSets[i]
		}
	}
	return nil
}

// Args renders the rule as iptables-restore arguments (after "-A chain"),
// its comment prefixed with the rule's hash so a read-back can tell whether
// the kernel holds exactly this rule. The comment is bounded to what the
// kernel keeps (namespace/name can be 63+253 characters), so the read-back
// finds exactly these arguments.
func (r Rule) Args() []string { return r.argsWithHash(r.Hash()) }

func (r Rule) argsWithHash(h string) []string {
	a := r.matchArgs()
	a = append(a, "-m", "comment", "--comment", r.commentWithHash(h))
	return append(a, r.actionArgs()...)
}

// commentWithHash is the comment as written to the kernel.
func (r Rule) commentWithHash(h string) string {
	return syntax.HashComment(h, r.Comment)
}

// Text renders the rule for an iptables-restore line.
func (r Rule) Text() string { return r.TextWithHash(r.Hash()) }

// TextWithHash is Text when the caller already knows the rule's hash.
func (r Rule) TextWithHash(h string) string {
	args := r.argsWithHash(h)
	q := make([]string, len(args))
	for i, s := range args {
		q[i] = syntax.Quote(s)
	}
	return strings.Join(q, " ")
}

// Hash identifies the rule's matches and action (not its comment).
func (r Rule) Hash() string {
	h := sha256.New()
	for _, s := range r.matchArgs() {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	for _, s := range r.actionArgs() {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}

// HashOfArgs extracts the rule hash from read-back arguments ("" if none).
func HashOfArgs(args []string) string { return syntax.HashOf(args) }

func (r Rule) matchArgs() []string {
	m := r.Match
	var a []string
	if m.InIface != "" {
		a = append(a, "-i", m.InIface)
	}
	if m.OutIface != "" {
		a = append(a, "-o", m.OutIface)
	}
	if m.Src.IsValid() {
		a = append(a, "-s", m.Src.String())
	}
	if m.Dst.IsValid() {
		a = append(a, "-d", m.Dst.String())
	}
	if m.Proto != "" {
		a = append(a, "-p", m.Proto)
	}
	if m.PhysIn != "" || m.PhysOut != "" || m.Bridged != Any {
		a = append(a, "-m", "physdev")
		if m.PhysIn != "" {
			a = append(a, "--physdev-in", m.PhysIn)
		}
		if m.PhysOut != "" {
			a = append(a, "--physdev-out", m.PhysOut)
		}
		switch m.Bridged {
		case Yes:
			a = append(a, "--physdev-is-bridged")
		case No:
			a = append(a, "!", "--physdev-is-bridged")
		}
	}
	if m.SrcSet != "" {
		a = append(a, "-m", "set", "--match-set", m.SrcSet, "src")
	}
	if m.DstSet != "" {
		a = append(a, "-m", "set", "--match-set", m.DstSet, "dst")
	}
	if m.Proto != "" && m.DPortMin != 0 {
		p := strconv.Itoa(int(m.DPortMin))
		if m.DPortMax > m.DPortMin {
			p += ":" + strconv.Itoa(int(m.DPortMax))
		}
		a = append(a, "-m", m.Proto, "--dport", p)
	}
	if m.Proto == "tcp" && m.NotSYN { // as iptables-save prints ! --syn
		a = append(a, "-m", "tcp", "!", "--tcp-flags", "FIN,SYN,RST,ACK", "SYN")
	}
	if m.CTStates != "" {
		a = append(a, "-m", "conntrack", "--ctstate", m.CTStates)
	}
	if m.MarkMask != 0 {
		a = append(a, "-m", "mark", "--mark", fmt.Sprintf("0x%x/0x%x", m.Mark, m.MarkMask))
	}
	return a
}

func (r Rule) actionArgs() []string {
	switch r.Action.Verb {
	case Accept:
		return []string{"-j", "ACCEPT"}
	case Drop:
		return []string{"-j", "DROP"}
	case Return:
		return []string{"-j", "RETURN"}
	case Jump:
		return []string{"-j", r.Action.Target}
	case Goto:
		return []string{"-g", r.Action.Target}
	case SetMark:
		return []string{"-j", "MARK", "--set-xmark", fmt.Sprintf("0x%x/0x%x", r.Action.Mark, r.Action.Mask)}
	}
	return []string{"-j", "DROP"}
}

// RestoreText renders the whole desired filter table as iptables-restore
// --noflush input: every WEFT- chain declared (which flushes it) and filled.
// Jump rules into built-in chains are not included; the Writer manages them.
func (s *State) RestoreText() string {
	var b strings.Builder
	b.WriteString("*filter\n")
	for _, c := range s.Chains {
		b.WriteString(":" + c.Name + " - [0:0]\n")
	}
	for _, c := range s.Chains {
		for _, r := range c.Rules {
			b.WriteString("-A " + c.Name + " " + r.Text() + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String()
}

// IPSetRestoreText renders the desired ipsets as `ipset restore` input that
// creates each set (-exist) and adds its members.
func (s *State) IPSetRestoreText() string {
	var b strings.Builder
	for _, set := range s.IPSets {
		WriteSet(&b, set.Name, set)
	}
	return b.String()
}

// WriteSet appends the `ipset restore` lines that create set as name and
// fill it.
func WriteSet(b *strings.Builder, name string, set IPSet) {
	b.WriteString("create " + name + " " + string(set.Type) + " family inet hashsize 1024 maxelem 1048576 -exist\n")
	for _, m := range set.Members {
		b.WriteString("add " + name + " " + m + " -exist\n")
	}
}
