package encapguard

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
)

// Tables is what the real guard needs from iptables and ipset, in the
// node's detected iptables mode; iptables.Runner satisfies it.
type Tables interface {
	table.Kernel
	SaveCounters(ctx context.Context, table string) (string, error)
	IPSetRestore(ctx context.Context, text string) error
	IPSetSaveNamed(ctx context.Context, names ...string) (string, error)
}

const (
	rawTable = "raw"
	builtin  = "PREROUTING"
	setOpts  = "family inet hashsize 1024 maxelem 65536"
)

// IPTables is the real Guard: rules through one internal/iptables/table
// Apply in the raw table, the known-nodes set through ipset restore.
type IPTables struct {
	t Tables

	// Drop totals survive chain rewrites (which zero the kernel's rule
	// counters): what the kernel counted is folded in before a rewrite.
	mu    sync.Mutex
	last  map[string]map[counterKey]uint64 // kernel counters at the last read
	total map[string]map[string]uint64
}

// counterKey is one reason's drops in one chain.
type counterKey struct{ chain, reason string }

// NewIPTables returns a guard writing through t.
func NewIPTables(t Tables) *IPTables {
	return &IPTables{t: t, last: map[string]map[counterKey]uint64{}, total: map[string]map[string]uint64{}}
}

// owner is what the guard of kind owns: its chain and the tree below it.
func owner(kind string) table.Owner {
	return table.Owner{Tables: []string{rawTable}, Names: []string{Chain(kind)}, Prefixes: []string{Chain(kind) + "-"}}
}

// desired is the guard's chains and its jump from raw PREROUTING
// (inserted at the top when missing).
func desired(s Spec) table.State {
	var st table.State
	for _, c := range chains(s) {
		tc := table.Chain{Table: rawTable, Name: c.name}
		for _, r := range c.rules {
			tc.Rules = append(tc.Rules, r)
		}
		st.Chains = append(st.Chains, tc)
	}
	st.Jumps = []table.Jump{{Table: rawTable, Chain: builtin, Rule: jump(s.Encap), Pos: table.Insert}}
	return st
}

func (g *IPTables) readSets(ctx context.Context, kind string) (map[string]*iptables.IPSet, error) {
	sv, err := g.t.IPSetSaveNamed(ctx, Set(kind), tempSet(kind))
	if err != nil {
		return nil, fmt.Errorf("encapguard: read sets: %w", err)
	}
	sets, err := iptables.ParseIPSetSave(sv)
	if err != nil {
		return nil, fmt.Errorf("encapguard: parse sets: %w", err)
	}
	return sets, nil
}

// Apply converges: the set first (the rules use it), then the chains and
// the jump, each only when the kernel differs.
func (g *IPTables) Apply(ctx context.Context, s Spec) (int, error) {
	if s.PodIface == "" {
		s.PodIface = DefaultPodIface
	}
	k := s.Encap.Kind
	tb := table.New(g.t, owner(k))
	p, err := tb.Plan(ctx, desired(s), true)
	if err != nil {
		return 0, fmt.Errorf("encapguard: %s: %w", k, err)
	}
	sets, err := g.readSets(ctx, k)
	if err != nil {
		return 0, err
	}
	writes := 0
	if setText := renderSet(s, sets); setText != "" {
		if err := g.t.IPSetRestore(ctx, setText); err != nil {
			return writes, fmt.Errorf("encapguard: %s: %w", k, err)
		}
		writes++
	}
	if p.Text == "" {
		return writes, nil
	}
	if len(p.Stats.Written) > 0 {
		_, _ = g.Drops(ctx, k) // fold the counters the rewrite zeroes
	}
	if err := tb.Commit(ctx, p); err != nil {
		return writes, fmt.Errorf("encapguard: %s: %w", k, err)
	}
	g.mu.Lock()
	for key := range g.last[k] {
		if slices.Contains(p.Stats.Written, key.chain) {
			delete(g.last[k], key)
		}
	}
	g.mu.Unlock()
	return writes + 1, nil
}

// renderSet returns the ipset restore text that makes the known-nodes set
// of s match ("" when it does). Pure.
func renderSet(s Spec, sets map[string]*iptables.IPSet) string {
	k := s.Encap.Kind
	want := members(s)
	if have := sets[Set(k)]; have != nil && slices.Equal(sortedMembers(have), want) && sets[tempSet(k)] == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "create %s hash:ip %s -exist\n", Set(k), setOpts)
	fmt.Fprintf(&b, "create %s hash:ip %s -exist\nflush %s\n", tempSet(k), setOpts, tempSet(k))
	for _, m := range want {
		fmt.Fprintf(&b, "add %s %s\n", tempSet(k), m)
	}
	fmt.Fprintf(&b, "swap %s %s\ndestroy %s\n", tempSet(k), Set(k), tempSet(k))
	return b.String()
}

func sortedMembers(s *iptables.IPSet) []string {
	out := slices.Clone(s.Members)
	slices.Sort(out)
	return out
}

// Remove deletes the jump and the chains, then the sets.
func (g *IPTables) Remove(ctx context.Context, kind string) error {
	sets, err := g.readSets(ctx, kind)
	if err != nil {
		return err
	}
	if err := table.New(g.t, owner(kind)).Remove(ctx); err != nil {
		return fmt.Errorf("encapguard: remove %s rules: %w", kind, err)
	}
	var b strings.Builder
	for _, name := range []string{Set(kind), tempSet(kind)} {
		if sets[name] != nil {
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
// a guard adopted from an earlier weftd, since its chains were last
// written), read from the drop rules' counters.
func (g *IPTables) Drops(ctx context.Context, kind string) (map[string]uint64, error) {
	out, err := g.t.SaveCounters(ctx, rawTable)
	if err != nil {
		return nil, fmt.Errorf("encapguard: read counters: %w", err)
	}
	d, err := iptables.ParseSave(out, rawTable)
	if err != nil {
		return nil, fmt.Errorf("encapguard: %w", err)
	}
	cur := dropsFrom(d, kind)
	g.mu.Lock()
	defer g.mu.Unlock()
	tot := g.total[kind]
	if tot == nil {
		tot = map[string]uint64{}
		for _, r := range Reasons() {
			tot[r] = 0
		}
		g.total[kind] = tot
	}
	last := g.last[kind]
	for key, v := range cur {
		if v >= last[key] {
			tot[key.reason] += v - last[key]
		} else {
			tot[key.reason] += v // the chain was rewritten behind our back
		}
	}
	g.last[kind] = cur
	return maps.Clone(tot), nil
}

// dropsFrom returns the packet counters of kind's drop rules, by chain and
// reason, in a dump made with `iptables-save -c`.
func dropsFrom(d *iptables.Dump, kind string) map[counterKey]uint64 {
	drops := map[counterKey]uint64{}
	o := owner(kind)
	for name, c := range d.Chains {
		if !o.Owns(name) {
			continue
		}
		for i, args := range c.Rules {
			if i >= len(c.Packets) {
				break
			}
			for _, r := range Reasons() {
				if iptables.Comment(args) == dropComment(kind, r) {
					drops[counterKey{name, r}] += c.Packets[i]
				}
			}
		}
	}
	return drops
}
