package policy

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
	"github.com/weftnet/weft/policy/rules"
)

// Dataplane converges the kernel to a rendered State. readBack makes it
// re-read the kernel first (the periodic resync that repairs drift);
// otherwise it trusts what it last wrote and writes only what changed.
type Dataplane interface {
	Apply(ctx context.Context, st *rules.State, readBack bool) (ApplyStats, error)
}

// ApplyStats says what one Apply wrote.
type ApplyStats struct {
	ChainsWritten, ChainsDeleted          int
	JumpFixed                             bool
	SetsCreated, SetsSwapped, SetsDeleted int
	Restored                              bool // iptables-restore ran
}

// Kernel is the exec surface the Writer needs; iptables.Runner has it.
type Kernel interface {
	Restore(ctx context.Context, text string) error
	Save(ctx context.Context, table string) (string, error)
	IPSetRestore(ctx context.Context, text string) error
	IPSetSave(ctx context.Context) (string, error)
}

// SetSwapper is an optional Kernel capability: replace the members of a
// hash:ip set atomically without exec'ing a tool (netlink).
type SetSwapper interface {
	SwapIPSet(ctx context.Context, name, temp string, members []netip.Addr) error
}

// nodeKernel is the real Kernel: the tools for rules and bulk set loads,
// netlink for member swaps.
type nodeKernel struct {
	iptables.Runner
	*iptables.NetlinkSets
}

// Owned chain and set prefixes. weftd's WEFT-FWD-ACCEPT / WEFT-MASQ-CLUSTER
// and anyone else's chains are never touched.
var (
	ownedChainPrefixes = []string{"WEFT-POL-", "WEFT-PI-", "WEFT-PE-", "WEFT-FROM-", "WEFT-TO-"}
	ownedSetPrefixes   = []string{"weft-p-", "weft-n-", "weft-t-"}
)

// tableOwner is what the policy writer owns in the filter table: its
// chains by prefix, and the jumps to them in FORWARD and INPUT.
var tableOwner = table.Owner{Tables: []string{"filter"}, Prefixes: ownedChainPrefixes}

// OwnedChain reports whether the policy writer manages chain name.
func OwnedChain(name string) bool { return hasAnyPrefix(name, ownedChainPrefixes) }

// OwnedSet reports whether the policy writer manages ipset name.
func OwnedSet(name string) bool { return hasAnyPrefix(name, ownedSetPrefixes) }

func hasAnyPrefix(s string, ps []string) bool {
	for _, p := range ps {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

// view is what the Writer believes the kernel's ipsets hold (the table
// keeps the rules' side).
type view struct {
	// filter is the read-back of the filter table, handed to the table
	// when the view is taken into use.
	filter *iptables.Dump
	sets   map[string]setView
	// spoofed is the packet counter of WEFT-POL-SPOOF's DROP, when the read
	// had counters and found the rule.
	spoofed      uint64
	spoofedKnown bool
}

type setView struct {
	typ     rules.SetType
	members []string // normalized, sorted
}

// Writer programs iptables and ipsets through a Kernel.
type Writer struct {
	k    Kernel
	log  *slog.Logger
	mu   sync.Mutex
	tbl  *table.Table         // the filter chains and jumps
	cur  *view                // nil: unknown, read the kernel on the next Apply
	memo map[string]chainMemo // rule arguments of the last desired chains
	pre  *prefetch
	// setMemo keeps normalized members per set while the renderer hands
	// over the same (cached) member slice.
	setMemo map[string]setMemo
	spoofed spoofCounter // forged packets dropped, summed over read-backs
}

type setMemo struct {
	src, norm []string
}

func sameSlice(a, b []string) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

func (w *Writer) normalized(s rules.IPSet, memo map[string]setMemo) []string {
	if m, ok := w.setMemo[s.Name]; ok && sameSlice(m.src, s.Members) {
		memo[s.Name] = m
		return m.norm
	}
	n := normMembers(s.Members)
	memo[s.Name] = setMemo{src: s.Members, norm: n}
	return n
}

// prefetch is a kernel read started before the State was ready.
type prefetch struct {
	done chan struct{}
	v    *view
	err  error
}

// Prefetch starts reading the kernel in the background so that the next
// Apply with readBack overlaps that read with the caller's render.
func (w *Writer) Prefetch(ctx context.Context) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pre != nil {
		return
	}
	p := &prefetch{done: make(chan struct{})}
	w.pre = p
	go func() {
		defer close(p.done)
		p.v, p.err = w.read(ctx, nil)
	}()
}

type chainMemo struct {
	rules []rules.Rule
	args  []table.Rule
}

// args returns the rules of c as arguments (each with its hash comment),
// reusing the last computation when the chain's rules are unchanged
// (hashing every rule is most of an incremental sync's CPU otherwise).
func (w *Writer) args(c rules.Chain, memo map[string]chainMemo) []table.Rule {
	if m, ok := w.memo[c.Name]; ok && slices.EqualFunc(m.rules, c.Rules, ruleEqual) {
		memo[c.Name] = m
		return m.args
	}
	args := make([]table.Rule, len(c.Rules))
	for i, r := range c.Rules {
		args[i] = r.Args()
	}
	memo[c.Name] = chainMemo{rules: c.Rules, args: args}
	return args
}

func ruleEqual(a, b rules.Rule) bool { return a == b }

// NewWriter returns a Writer over k.
func NewWriter(k Kernel, log *slog.Logger) *Writer {
	if log == nil {
		log = slog.Default()
	}
	return &Writer{k: k, log: log, tbl: table.New(k, tableOwner)}
}

// NewNodeWriter detects the iptables backend of the namespace at netns
// ("" = the current one) and returns a Writer using it.
func NewNodeWriter(ctx context.Context, netns string, log *slog.Logger) (*Writer, iptables.Mode, error) {
	mode, err := iptables.Detect(ctx, netns)
	if err != nil {
		return nil, "", err
	}
	run := iptables.Runner{Mode: mode, NetNS: netns}
	sets, err := iptables.NewNetlinkSets(netns)
	if err != nil {
		if log == nil {
			log = slog.Default()
		}
		log.Warn("ipset over netlink unavailable; updating sets with ipset restore", "err", err)
		return NewWriter(run, log), mode, nil
	}
	return NewWriter(nodeKernel{Runner: run, NetlinkSets: sets}, log), mode, nil
}

// Close releases what the Kernel holds (a netlink handle).
func (w *Writer) Close() error {
	if c, ok := w.k.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// Apply implements Dataplane: ipsets first, then one iptables-restore
// transaction, then stale ipsets are destroyed.
func (w *Writer) Apply(ctx context.Context, st *rules.State, readBack bool) (ApplyStats, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	var stats ApplyStats
	pre := w.pre
	w.pre = nil
	if pre != nil && (readBack || w.cur == nil) {
		select {
		case <-pre.done:
		case <-ctx.Done():
			return stats, ctx.Err()
		}
		if pre.err != nil {
			w.cur = nil
			return stats, pre.err
		}
		w.adopt(pre.v)
	} else if readBack || w.cur == nil {
		v, err := w.read(ctx, st)
		if err != nil {
			w.cur = nil
			return stats, err
		}
		w.adopt(v)
	}
	cur := w.cur
	w.cur = nil // until this Apply succeeds
	next, err := w.applySets(ctx, st, cur, &stats)
	if err != nil {
		return stats, err
	}
	if err := w.applyRules(ctx, st, &stats); err != nil {
		return stats, err
	}
	if err := w.deleteStaleSets(ctx, st, next, &stats); err != nil {
		return stats, err
	}
	w.cur = next
	return stats, nil
}

// adopt makes a fresh read-back what the next writes diff against.
func (w *Writer) adopt(v *view) {
	w.tbl.Observe(map[string]*iptables.Dump{"filter": v.filter})
	v.filter = nil
	w.cur = v
	w.spoofed.observe(v)
}

// read builds a view from iptables-save and ipset save.
func (w *Writer) read(ctx context.Context, st *rules.State) (*view, error) {
	// Both tools run at once: a resync costs one exec latency, not two.
	var stext string
	var serr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		stext, serr = w.k.IPSetSave(ctx)
	}()
	save := w.k.Save
	if cs, ok := w.k.(counterSaver); ok { // the same read, with counters
		save = cs.SaveCounters
	}
	text, err := save(ctx, "filter")
	<-done
	if err != nil {
		return nil, fmt.Errorf("policy writer: read rules: %w", err)
	}
	d, err := iptables.ParseSave(text, "filter")
	if err != nil {
		return nil, fmt.Errorf("policy writer: parse rules: %w", err)
	}
	v := &view{filter: d, sets: map[string]setView{}}
	if c := d.Chains[rules.ChainSpoof]; c != nil {
		v.spoofed, v.spoofedKnown = spoofDrops(c)
	}
	_ = st
	if serr != nil {
		return nil, fmt.Errorf("policy writer: read ipsets: %w", serr)
	}
	sets, err := iptables.ParseIPSetSave(stext)
	if err != nil {
		return nil, fmt.Errorf("policy writer: parse ipsets: %w", err)
	}
	for name, s := range sets {
		if OwnedSet(name) {
			v.sets[name] = setView{typ: rules.SetType(s.Type), members: normMembers(s.Members)}
		}
	}
	return v, nil
}

func normMembers(ms []string) []string {
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		f := strings.Fields(m)
		if len(f) == 0 {
			continue
		}
		f[0] = strings.TrimSuffix(f[0], "/32")
		out = append(out, strings.Join(f, " "))
	}
	sort.Strings(out)
	return out
}

func (w *Writer) applySets(ctx context.Context, st *rules.State, cur *view, stats *ApplyStats) (*view, error) {
	next := &view{sets: map[string]setView{}}
	for n, s := range cur.sets {
		next.sets[n] = s
	}
	var b strings.Builder
	type swap struct {
		name    string
		members []netip.Addr
	}
	var swaps []swap
	swapper, _ := w.k.(SetSwapper)
	memo := make(map[string]setMemo, len(st.IPSets))
	defer func() { w.setMemo = memo }()
	for _, s := range st.IPSets {
		want := setView{typ: s.Type, members: w.normalized(s, memo)}
		have, ok := cur.sets[s.Name]
		switch {
		case !ok:
			rules.WriteSet(&b, s.Name, s)
			stats.SetsCreated++
		case have.typ != want.typ:
			return nil, fmt.Errorf("policy writer: ipset %s has type %s, want %s", s.Name, have.typ, want.typ)
		case !slices.Equal(have.members, want.members) && swapper != nil && s.Type == rules.HashIP:
			var addrs []netip.Addr
			for _, m := range s.Members {
				if a, err := netip.ParseAddr(m); err == nil {
					addrs = append(addrs, a)
				}
			}
			swaps = append(swaps, swap{s.Name, addrs})
			delete(next.sets, rules.TempSetName(s.Name)) // the swap replaces any leftover
			stats.SetsSwapped++
		case !slices.Equal(have.members, want.members):
			tmp := rules.TempSetName(s.Name)
			if _, leftover := cur.sets[tmp]; leftover { // from an interrupted update
				b.WriteString("destroy " + tmp + "\n")
				delete(next.sets, tmp)
			}
			rules.WriteSet(&b, tmp, rules.IPSet{Type: s.Type})
			b.WriteString("flush " + tmp + "\n")
			for _, m := range s.Members {
				b.WriteString("add " + tmp + " " + m + " -exist\n")
			}
			b.WriteString("swap " + tmp + " " + s.Name + "\ndestroy " + tmp + "\n")
			stats.SetsSwapped++
		default:
			continue
		}
		next.sets[s.Name] = want
	}
	if b.Len() > 0 {
		if err := w.k.IPSetRestore(ctx, b.String()); err != nil {
			return nil, fmt.Errorf("policy writer: update ipsets: %w", err)
		}
	}
	for _, sw := range swaps {
		if err := swapper.SwapIPSet(ctx, sw.name, rules.TempSetName(sw.name), sw.members); err != nil {
			return nil, fmt.Errorf("policy writer: update ipsets: %w", err)
		}
	}
	return next, nil
}

// applyRules converges the filter chains and the jumps to them in one
// iptables-restore transaction (none when the kernel already matches).
func (w *Writer) applyRules(ctx context.Context, st *rules.State, stats *ApplyStats) error {
	memo := make(map[string]chainMemo, len(st.Chains))
	defer func() { w.memo = memo }()
	ts := table.State{Chains: make([]table.Chain, 0, len(st.Chains))}
	for _, c := range st.Chains {
		ts.Chains = append(ts.Chains, table.Chain{Table: "filter", Name: c.Name, Rules: w.args(c, memo)})
	}
	for _, j := range st.Jumps {
		ts.Jumps = append(ts.Jumps, table.Jump{Table: "filter", Chain: j.Builtin, Rule: j.Rule.Args(), Pos: table.First})
	}
	res, err := w.tbl.Apply(ctx, ts, false)
	if err != nil {
		return fmt.Errorf("policy writer: %w", err)
	}
	stats.ChainsWritten, stats.ChainsDeleted = res.ChainsWritten, res.ChainsDeleted
	stats.JumpFixed, stats.Restored = res.JumpsFixed > 0, res.Restored
	return nil
}

func (w *Writer) deleteStaleSets(ctx context.Context, st *rules.State, next *view, stats *ApplyStats) error {
	want := map[string]bool{}
	for _, s := range st.IPSets {
		want[s.Name] = true
	}
	var b strings.Builder
	var gone []string
	for name := range next.sets {
		if !want[name] {
			gone = append(gone, name)
		}
	}
	sort.Strings(gone)
	for _, name := range gone {
		b.WriteString("destroy " + name + "\n")
	}
	if b.Len() == 0 {
		return nil
	}
	if err := w.k.IPSetRestore(ctx, b.String()); err != nil {
		return fmt.Errorf("policy writer: destroy stale ipsets: %w", err)
	}
	for _, name := range gone {
		delete(next.sets, name)
		stats.SetsDeleted++
	}
	return nil
}
