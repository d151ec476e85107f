package encapguard

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/weftnet/weft/internal/iptables"
)

// Tables is what the real guard needs from iptables and ipset, in the
// node's detected iptables mode; iptables.Runner satisfies it.
type Tables interface {
	Restore(ctx context.Context, text string) error
	Save(ctx context.Context, table string) (string, error)
	SaveCounters(ctx context.Context, table string) (string, error)
	IPSetRestore(ctx context.Context, text string) error
	IPSetSaveNamed(ctx context.Context, names ...string) (string, error)
}

const (
	table   = "raw"
	builtin = "PREROUTING"
	setOpts = "family inet hashsize 1024 maxelem 65536"
)

// IPTables is the real Guard: rules through iptables-restore --noflush in
// the raw table, the known-nodes set through ipset restore.
type IPTables struct {
	t Tables

	// Drop totals survive chain rewrites (which zero the kernel's rule
	// counters): what the kernel counted is folded in before a rewrite.
	mu    sync.Mutex
	last  map[string]map[string]uint64 // kernel counters at the last read
	total map[string]map[string]uint64
}

// NewIPTables returns a guard writing through t.
func NewIPTables(t Tables) *IPTables {
	return &IPTables{t: t, last: map[string]map[string]uint64{}, total: map[string]map[string]uint64{}}
}

type kernelState struct {
	raw  *iptables.Dump
	sets map[string]*iptables.IPSet
}

func (g *IPTables) read(ctx context.Context, kind string) (kernelState, error) {
	out, err := g.t.Save(ctx, table)
	if err != nil {
		return kernelState{}, fmt.Errorf("encapguard: read raw table: %w", err)
	}
	d, err := iptables.ParseSave(out, table)
	if err != nil {
		return kernelState{}, fmt.Errorf("encapguard: parse raw table: %w", err)
	}
	sv, err := g.t.IPSetSaveNamed(ctx, Set(kind), tempSet(kind))
	if err != nil {
		return kernelState{}, fmt.Errorf("encapguard: read sets: %w", err)
	}
	sets, err := iptables.ParseIPSetSave(sv)
	if err != nil {
		return kernelState{}, fmt.Errorf("encapguard: parse sets: %w", err)
	}
	return kernelState{raw: d, sets: sets}, nil
}

// Apply converges: the set first (the rules use it), then the chain and
// its jump, each only when the kernel differs.
func (g *IPTables) Apply(ctx context.Context, s Spec) (int, error) {
	if s.PodIface == "" {
		s.PodIface = DefaultPodIface
	}
	ks, err := g.read(ctx, s.Encap.Kind)
	if err != nil {
		return 0, err
	}
	setText, ruleText := render(s, ks)
	writes := 0
	if setText != "" {
		if err := g.t.IPSetRestore(ctx, setText); err != nil {
			return writes, fmt.Errorf("encapguard: %s: %w", s.Encap.Kind, err)
		}
		writes++
	}
	if ruleText != "" {
		rewrite := strings.Contains(ruleText, "\n:"+Chain(s.Encap.Kind)+" ")
		if rewrite {
			_, _ = g.Drops(ctx, s.Encap.Kind) // fold the counters the rewrite zeroes
		}
		if err := g.t.Restore(ctx, ruleText); err != nil {
			return writes, fmt.Errorf("encapguard: %s: %w", s.Encap.Kind, err)
		}
		if rewrite {
			g.mu.Lock()
			delete(g.last, s.Encap.Kind)
			g.mu.Unlock()
		}
		writes++
	}
	return writes, nil
}

// render returns the ipset and iptables restore texts that make the kernel
// match s ("" where nothing differs). Pure.
func render(s Spec, ks kernelState) (setText, ruleText string) {
	k := s.Encap.Kind
	want := members(s)
	if have := ks.sets[Set(k)]; have == nil || !slices.Equal(sortedMembers(have), want) || ks.sets[tempSet(k)] != nil {
		var b strings.Builder
		fmt.Fprintf(&b, "create %s hash:ip %s -exist\n", Set(k), setOpts)
		fmt.Fprintf(&b, "create %s hash:ip %s -exist\nflush %s\n", tempSet(k), setOpts, tempSet(k))
		for _, m := range want {
			fmt.Fprintf(&b, "add %s %s\n", tempSet(k), m)
		}
		fmt.Fprintf(&b, "swap %s %s\ndestroy %s\n", tempSet(k), Set(k), tempSet(k))
		setText = b.String()
	}
	chain, j := Chain(k), jump(s.Encap)
	var lines []string
	haveJump := false
	if c := ks.raw.Chains[builtin]; c != nil {
		for _, r := range c.Rules {
			if !jumpsTo(r, chain) {
				continue
			}
			if slices.Equal(r, j) && !haveJump {
				haveJump = true
				continue
			}
			lines = append(lines, "-D "+builtin+" "+join(r)) // stale (old port) or duplicate
		}
	}
	lines = append(lines, chainLines(k, chains(s), ks.raw)...)
	if !haveJump {
		lines = append(lines, "-I "+builtin+" 1 "+join(j))
	}
	if len(lines) == 0 {
		return setText, ""
	}
	return setText, "*" + table + "\n" + strings.Join(lines, "\n") + "\nCOMMIT\n"
}

// owned reports whether chain belongs to the guard of kind.
func owned(kind, chain string) bool {
	return chain == Chain(kind) || strings.HasPrefix(chain, Chain(kind)+"-")
}

// chainLines rewrites all the guard's chains when any differs from want,
// and deletes the ones no longer wanted (after the rewrite dropped every
// reference to them).
func chainLines(k string, want []chainRules, d *iptables.Dump) []string {
	wanted := map[string]bool{}
	same := true
	for _, c := range want {
		wanted[c.name] = true
		if have := d.Chains[c.name]; have == nil || !slices.EqualFunc(have.Rules, c.rules, slices.Equal) {
			same = false
		}
	}
	var stale []string
	for _, name := range d.Order {
		if owned(k, name) && !wanted[name] {
			stale = append(stale, name)
		}
	}
	if same && len(stale) == 0 {
		return nil
	}
	var lines []string
	for _, c := range want {
		lines = append(lines, ":"+c.name+" - [0:0]")
	}
	for _, c := range want {
		for _, r := range c.rules {
			lines = append(lines, "-A "+c.name+" "+join(r))
		}
	}
	for _, name := range stale {
		lines = append(lines, "-F "+name)
	}
	for _, name := range stale {
		lines = append(lines, "-X "+name)
	}
	return lines
}

func sortedMembers(s *iptables.IPSet) []string {
	out := slices.Clone(s.Members)
	slices.Sort(out)
	return out
}

func jumpsTo(r []string, chain string) bool {
	i := slices.Index(r, "-j")
	return i >= 0 && i+1 < len(r) && r[i+1] == chain
}

func join(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = iptables.Quote(a)
	}
	return strings.Join(q, " ")
}

// Remove deletes the jump and the chain, then the sets.
func (g *IPTables) Remove(ctx context.Context, kind string) error {
	ks, err := g.read(ctx, kind)
	if err != nil {
		return err
	}
	chain := Chain(kind)
	var lines []string
	if c := ks.raw.Chains[builtin]; c != nil {
		for _, r := range c.Rules {
			if jumpsTo(r, chain) {
				lines = append(lines, "-D "+builtin+" "+join(r))
			}
		}
	}
	var mine []string
	for _, name := range ks.raw.Order {
		if owned(kind, name) {
			mine = append(mine, name)
			lines = append(lines, "-F "+name)
		}
	}
	for _, name := range mine {
		lines = append(lines, "-X "+name)
	}
	if len(lines) > 0 {
		if err := g.t.Restore(ctx, "*"+table+"\n"+strings.Join(lines, "\n")+"\nCOMMIT\n"); err != nil {
			return fmt.Errorf("encapguard: remove %s rules: %w", kind, err)
		}
	}
	var b strings.Builder
	for _, name := range []string{Set(kind), tempSet(kind)} {
		if ks.sets[name] != nil {
			fmt.Fprintf(&b, "destroy %s\n", name)
		}
	}
	if b.Len() > 0 {
		if err := g.t.IPSetRestore(ctx, b.String()); err != nil {
			return fmt.Errorf("encapguard: remove %s sets: %w", kind, err)
		}
	}
	return nil
}

// Drops returns the packets dropped since this guard was created (or, for
// a guard adopted from an earlier weftd, since its chain was last
// written), read from the drop rules' counters.
func (g *IPTables) Drops(ctx context.Context, kind string) (map[string]uint64, error) {
	out, err := g.t.SaveCounters(ctx, table)
	if err != nil {
		return nil, fmt.Errorf("encapguard: read counters: %w", err)
	}
	d, err := iptables.ParseSave(out, table)
	if err != nil {
		return nil, fmt.Errorf("encapguard: %w", err)
	}
	cur := dropsFrom(d, kind)
	g.mu.Lock()
	defer g.mu.Unlock()
	tot := g.total[kind]
	if tot == nil {
		tot = map[string]uint64{}
		g.total[kind] = tot
	}
	last := g.last[kind]
	for r, v := range cur {
		if v >= last[r] {
			tot[r] += v - last[r]
		} else {
			tot[r] += v // the chain was rewritten behind our back
		}
	}
	g.last[kind] = cur
	return maps.Clone(tot), nil
}

// dropsFrom sums the packet counters of kind's drop rules, by reason, in a
// dump made with `iptables-save -c`.
func dropsFrom(d *iptables.Dump, kind string) map[string]uint64 {
	drops := map[string]uint64{}
	for _, r := range Reasons() {
		drops[r] = 0
	}
	for name, c := range d.Chains {
		if !owned(kind, name) {
			continue
		}
		for i, args := range c.Rules {
			if i >= len(c.Packets) {
				break
			}
			for _, r := range Reasons() {
				if iptables.Comment(args) == dropComment(kind, r) {
					drops[r] += c.Packets[i]
				}
			}
		}
	}
	return drops
}
