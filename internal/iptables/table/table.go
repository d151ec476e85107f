// Package table is Weft's one iptables writer: an owner declares its
// chains as data (table, chain, rules) and the few jump rules it places in
// built-in chains, and Apply converges the kernel to exactly that in one
// `iptables-restore --noflush` transaction, through the iptables mode
// (legacy or nft) and family the Kernel was built for.
//
// Ownership. An owner owns chains by exact name and by prefix (its Owner);
// in a built-in chain it owns the rules that jump or go to one of its
// chains. Nothing else is read as its own or touched. Chain names an
// earlier version used are listed as Retired: Apply deletes them and every
// jump to them, so an upgrade leaves no stale chain behind.
//
// Identity. A rule whose comment carries a hash ("weft:<hash> ...",
// iptables.HashComment) is compared by that hash; any other rule by its
// exact arguments, which therefore must be written as iptables-save prints
// them. An owned chain is rewritten (declared, which flushes it, and
// filled) only when its rules differ; an owned chain the state no longer
// names is flushed and deleted; a jump that is missing, changed,
// duplicated or (for Position First) no longer on top is deleted by its
// saved spec and put back.
//
// Read-back. Apply with readBack reads every table the owner uses with
// iptables-save and diffs against that, repairing drift; without it, it
// diffs against what the last successful Apply left. Fake holds table
// state, loads the same restore text and dumps it in iptables-save form.
// The package does no I/O of its own: the Kernel (iptables.Runner, or
// Fake) is passed in.
package table

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/weftnet/weft/internal/iptables/syntax"
)

// Rule is one rule's arguments after "-A <chain>".
type Rule []string

// Chain is a chain the owner declares, with its rules in order.
type Chain struct {
	Table string // "filter", "nat", "raw", ...
	Name  string
	Rules []Rule
}

// Position says where a jump goes in its built-in chain.
type Position int

// Jump positions.
const (
	// Append adds a missing jump at the end; anywhere in the chain will do.
	Append Position = iota
	// Insert adds a missing jump at the top; once there, anywhere will do.
	Insert
	// First keeps the jump the chain's first rule: when another rule gets
	// above it, the jump is moved back to the top.
	First
)

// Jump is a rule the owner places in a built-in chain.
type Jump struct {
	Table string
	Chain string // a built-in chain such as FORWARD
	Rule  Rule
	Pos   Position
}

// State is everything an owner wants in the kernel.
type State struct {
	Chains []Chain
	Jumps  []Jump
}

// Owner says what a Table owns and reads.
type Owner struct {
	// Tables are the tables the owner reads back and writes, in the order
	// the restore text handles them.
	Tables   []string
	Names    []string // chains owned by exact name
	Prefixes []string // chains owned by name prefix
	// Retired are chain names an earlier version used: deleted, with every
	// jump to them, by each Apply.
	Retired []string
}

// Owns reports whether chain is the owner's (retired names included).
func (o Owner) Owns(chain string) bool {
	if slices.Contains(o.Names, chain) || slices.Contains(o.Retired, chain) {
		return true
	}
	for _, p := range o.Prefixes {
		if strings.HasPrefix(chain, p) {
			return true
		}
	}
	return false
}

// Kernel loads and reads rules; iptables.Runner and Fake are Kernels.
type Kernel interface {
	Restore(ctx context.Context, text string) error
	Save(ctx context.Context, table string) (string, error)
}

// Stats says what one Apply changed.
type Stats struct {
	ChainsWritten, ChainsDeleted int
	JumpsFixed                   int  // built-in chains whose jumps were repaired
	Restored                     bool // iptables-restore ran
	// Written names the chains that were rewritten (their rule counters
	// restart at zero).
	Written []string
}

// Table converges one owner's chains. It is not safe for concurrent use.
type Table struct {
	k     Kernel
	owner Owner
	cur   *snapshot // what the kernel holds; nil: unknown, read it
	memo  keyMemo   // rule keys of the last planned chains
}

// New returns a Table writing through k.
func New(k Kernel, o Owner) *Table { return &Table{k: k, owner: o} }

// Read returns iptables-save of every table the owner uses, parsed.
func (t *Table) Read(ctx context.Context) (map[string]*syntax.Dump, error) {
	dumps := make(map[string]*syntax.Dump, len(t.owner.Tables))
	for _, tb := range t.owner.Tables {
		out, err := t.k.Save(ctx, tb)
		if err != nil {
			return nil, fmt.Errorf("read %s table: %w", tb, err)
		}
		d, err := syntax.ParseSave(out, tb)
		if err != nil {
			return nil, fmt.Errorf("parse %s table: %w", tb, err)
		}
		dumps[tb] = d
	}
	return dumps, nil
}

// Observe makes dumps (of every table the owner uses) what the next Apply
// without readBack diffs against.
func (t *Table) Observe(dumps map[string]*syntax.Dump) { t.cur = observe(t.owner, dumps) }

// Plan is what Apply would write.
type Plan struct {
	Text  string // iptables-restore --noflush input; "" when nothing differs
	Stats Stats
	next  *snapshot
	memo  keyMemo
}

// Plan diffs st against what t knows of the kernel (reading it first when
// it knows nothing) without writing.
func (t *Table) Plan(ctx context.Context, st State, readBack bool) (Plan, error) {
	if readBack || t.cur == nil {
		dumps, err := t.Read(ctx)
		if err != nil {
			t.cur = nil
			return Plan{}, err
		}
		t.Observe(dumps)
	}
	if err := t.owner.check(st); err != nil {
		return Plan{}, err
	}
	p := plan(t.owner, t.cur, st, t.memo)
	t.memo = p.memo
	return p, nil
}

// Commit loads p. On failure t forgets what the kernel holds.
func (t *Table) Commit(ctx context.Context, p Plan) error {
	if p.Text == "" {
		t.cur = p.next
		return nil
	}
	if err := t.k.Restore(ctx, p.Text); err != nil {
		t.cur = nil
		return err
	}
	t.cur = p.next
	return nil
}

// Apply converges the kernel to st: Plan, then Commit.
func (t *Table) Apply(ctx context.Context, st State, readBack bool) (Stats, error) {
	p, err := t.Plan(ctx, st, readBack)
	if err != nil {
		return Stats{}, err
	}
	if err := t.Commit(ctx, p); err != nil {
		return Stats{}, err
	}
	return p.Stats, nil
}

// Remove deletes every chain t owns and every jump to them.
func (t *Table) Remove(ctx context.Context) error {
	_, err := t.Apply(ctx, State{}, true)
	return err
}

// Diff returns the restore text that turns the tables in dumps into st,
// "" when they already match. Pure.
func Diff(o Owner, dumps map[string]*syntax.Dump, st State) (string, Stats, error) {
	if err := o.check(st); err != nil {
		return "", Stats{}, err
	}
	p := plan(o, observe(o, dumps), st, nil)
	return p.Text, p.Stats, nil
}

// check refuses a state that writes outside what o owns.
func (o Owner) check(st State) error {
	for _, c := range st.Chains {
		if !o.Owns(c.Name) || slices.Contains(o.Retired, c.Name) {
			return fmt.Errorf("iptables table: refusing to write chain %s it does not own", c.Name)
		}
		if !slices.Contains(o.Tables, c.Table) {
			return fmt.Errorf("iptables table: chain %s in table %q the owner does not use", c.Name, c.Table)
		}
	}
	for _, j := range st.Jumps {
		if o.Owns(j.Chain) || !o.Owns(target(j.Rule)) || !slices.Contains(o.Tables, j.Table) {
			return fmt.Errorf("iptables table: jump %s in %s %s is not from a built-in chain to an owned one", strings.Join(j.Rule, " "), j.Table, j.Chain)
		}
	}
	return nil
}

// target returns the chain a rule jumps or goes to, "" if none.
func target(r []string) string {
	for i := 0; i+1 < len(r); i++ {
		switch r[i] {
		case "-j", "--jump", "-g", "--goto":
			return r[i+1]
		}
	}
	return ""
}

// key identifies a rule: its hash when its comment carries one, else its
// arguments.
func key(r []string) string {
	if h := syntax.HashOf(r); h != "" {
		return "#" + h
	}
	return strings.Join(r, "\x00")
}

func quote(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = syntax.Quote(a)
	}
	return strings.Join(q, " ")
}
