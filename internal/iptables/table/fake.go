package table

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/weftnet/weft/internal/iptables/syntax"
)

// Fake is an in-memory kernel for rootless tests: tables of chains and
// rules, and ipsets, changed by the same texts the real tools load
// (`iptables-restore --noflush`, `ipset restore`) and dumped in
// iptables-save and ipset-save form. It checks what the kernel checks
// where a writer can get it wrong: a rule's chain, target chain and sets
// must exist, a deleted chain must be empty and unreferenced, a destroyed
// set unused. A restore text is all-or-nothing.
type Fake struct {
	mu     sync.Mutex
	tables map[string]*fakeTable
	sets   map[string]*fakeSet
	// Restores and SetRestores count the successful loads.
	Restores, SetRestores int
}

type fakeTable struct {
	chains map[string]*fakeChain
}

type fakeChain struct {
	policy string // "" for a user chain
	rules  [][]string
}

type fakeSet struct {
	typ, opts string
	members   []string
}

// Built-in chains per table, in the order iptables-save prints them.
var builtins = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
}

// Targets that are not chains.
var standardTargets = []string{"ACCEPT", "DROP", "RETURN", "REJECT", "MASQUERADE", "SNAT", "DNAT", "MARK",
	"CT", "NOTRACK", "LOG", "CONNMARK", "REDIRECT", "TCPMSS"}

// NewFake returns a fake kernel with empty tables.
func NewFake() *Fake {
	return &Fake{tables: map[string]*fakeTable{}, sets: map[string]*fakeSet{}}
}

func newFakeTable(name string) *fakeTable {
	t := &fakeTable{chains: map[string]*fakeChain{}}
	for _, b := range builtins[name] {
		t.chains[b] = &fakeChain{policy: "ACCEPT"}
	}
	return t
}

func (t *fakeTable) clone() *fakeTable {
	c := &fakeTable{chains: make(map[string]*fakeChain, len(t.chains))}
	for n, ch := range t.chains {
		c.chains[n] = &fakeChain{policy: ch.policy, rules: slices.Clone(ch.rules)}
	}
	return c
}

// Restore implements Kernel: it loads text as `iptables-restore
// --noflush` does.
func (f *Fake) Restore(_ context.Context, text string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	work := map[string]*fakeTable{}
	var name string
	var cur *fakeTable
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		var err error
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			name = line[1:]
			if _, ok := builtins[name]; !ok {
				err = fmt.Errorf("unknown table %q", name)
				break
			}
			if cur = work[name]; cur == nil {
				cur = newFakeTable(name)
				if t := f.tables[name]; t != nil {
					cur = t.clone()
				}
			}
		case cur == nil:
			err = fmt.Errorf("%q outside a table", line)
		case line == "COMMIT":
			work[name], cur = cur, nil
		case strings.HasPrefix(line, ":"):
			err = cur.declare(name, strings.Fields(line[1:]))
		default:
			err = f.command(cur, line)
		}
		if err != nil {
			return fmt.Errorf("iptables-restore (fake): line %d: %w", n+1, err)
		}
	}
	if cur != nil {
		return fmt.Errorf("iptables-restore (fake): table %s without COMMIT", name)
	}
	maps.Copy(f.tables, work)
	f.Restores++
	return nil
}

func (t *fakeTable) declare(table string, f []string) error {
	if len(f) < 2 {
		return fmt.Errorf("bad chain line %v", f)
	}
	if slices.Contains(builtins[table], f[0]) {
		if f[1] != "-" {
			t.chains[f[0]].policy = f[1]
		}
		return nil
	}
	if f[1] != "-" {
		return fmt.Errorf("policy on user chain %s", f[0])
	}
	if c := t.chains[f[0]]; c != nil {
		c.rules = nil // --noflush: a declared user chain is flushed
		return nil
	}
	t.chains[f[0]] = &fakeChain{}
	return nil
}

// command runs one -A/-I/-D/-F/-X/-N/-P line on t.
func (f *Fake) command(t *fakeTable, line string) error {
	args, err := syntax.SplitArgs(line)
	if err != nil {
		return err
	}
	if len(args) < 2 && args[0] != "-F" {
		return fmt.Errorf("bad command %q", line)
	}
	op, rest := args[0], args[1:]
	var c *fakeChain
	if len(rest) > 0 {
		if c = t.chains[rest[0]]; c == nil && op != "-N" {
			return fmt.Errorf("%s: no chain %s", op, rest[0])
		}
	}
	switch op {
	case "-A":
		if err := f.valid(t, rest[1:]); err != nil {
			return err
		}
		c.rules = append(c.rules, rest[1:])
	case "-I":
		pos, spec := 1, rest[1:]
		if len(spec) > 0 {
			if n, err := strconv.Atoi(spec[0]); err == nil {
				pos, spec = n, spec[1:]
			}
		}
		if pos < 1 || pos > len(c.rules)+1 {
			return fmt.Errorf("-I %s %d: index out of range", rest[0], pos)
		}
		if err := f.valid(t, spec); err != nil {
			return err
		}
		c.rules = slices.Insert(c.rules, pos-1, spec)
	case "-D":
		return c.delete(rest[1:])
	case "-F":
		if c == nil {
			for _, ch := range t.chains {
				ch.rules = nil
			}
			return nil
		}
		c.rules = nil
	case "-X":
		return t.deleteChain(rest[0])
	case "-N":
		if c != nil {
			return fmt.Errorf("-N %s: chain exists", rest[0])
		}
		t.chains[rest[0]] = &fakeChain{}
	case "-P":
		if c.policy == "" || len(rest) != 2 {
			return fmt.Errorf("-P %v: not a built-in chain and a policy", rest)
		}
		c.policy = rest[1]
	default:
		return fmt.Errorf("unsupported command %q", line)
	}
	return nil
}

// valid checks that a rule's target chain and sets exist.
func (f *Fake) valid(t *fakeTable, rule []string) error {
	if tg := target(rule); tg != "" && !slices.Contains(standardTargets, tg) {
		if c := t.chains[tg]; c == nil || c.policy != "" {
			return fmt.Errorf("target %s is not a user chain", tg)
		}
	}
	for i := 0; i+1 < len(rule); i++ {
		if rule[i] == "--match-set" && f.sets[rule[i+1]] == nil {
			return fmt.Errorf("set %s does not exist", rule[i+1])
		}
	}
	return nil
}

func (c *fakeChain) delete(spec []string) error {
	if len(spec) == 1 {
		if n, err := strconv.Atoi(spec[0]); err == nil {
			if n < 1 || n > len(c.rules) {
				return fmt.Errorf("-D %d: no such rule", n)
			}
			c.rules = slices.Delete(c.rules, n-1, n)
			return nil
		}
	}
	i := slices.IndexFunc(c.rules, func(r []string) bool { return slices.Equal(r, spec) })
	if i < 0 {
		return fmt.Errorf("-D %s: no such rule", strings.Join(spec, " "))
	}
	c.rules = slices.Delete(c.rules, i, i+1)
	return nil
}

func (t *fakeTable) deleteChain(name string) error {
	c := t.chains[name]
	switch {
	case c.policy != "":
		return fmt.Errorf("-X %s: built-in chain", name)
	case len(c.rules) > 0:
		return fmt.Errorf("-X %s: chain not empty", name)
	}
	for other, oc := range t.chains {
		for _, r := range oc.rules {
			if target(r) == name {
				return fmt.Errorf("-X %s: still referenced from %s", name, other)
			}
		}
	}
	delete(t.chains, name)
	return nil
}

// Save implements Kernel: the table as iptables-save prints it, without
// the "#" lines (built-in chains first, then user chains by name, then
// every chain's rules in that order).
func (f *Fake) Save(_ context.Context, table string) (string, error) {
	return f.dump(table, false)
}

// SaveCounters is Save with "[0:0]" counters on every rule
// (iptables-save -c).
func (f *Fake) SaveCounters(_ context.Context, table string) (string, error) {
	return f.dump(table, true)
}

// Dump returns Save of each table, concatenated: the golden-file form.
func (f *Fake) Dump(tables ...string) string {
	var b strings.Builder
	for _, t := range tables {
		s, err := f.dump(t, false)
		if err != nil {
			return err.Error()
		}
		b.WriteString(s)
	}
	return b.String()
}

func (f *Fake) dump(table string, counters bool) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := builtins[table]; !ok {
		return "", fmt.Errorf("iptables-save (fake): unknown table %q", table)
	}
	t := f.tables[table]
	if t == nil {
		t = newFakeTable(table)
	}
	order := slices.Clone(builtins[table])
	var user []string
	for n, c := range t.chains {
		if c.policy == "" {
			user = append(user, n)
		}
	}
	slices.Sort(user)
	order = append(order, user...)
	var b strings.Builder
	b.WriteString("*" + table + "\n")
	for _, n := range order {
		pol := t.chains[n].policy
		if pol == "" {
			pol = "-"
		}
		b.WriteString(":" + n + " " + pol + " [0:0]\n")
	}
	for _, n := range order {
		for _, r := range t.chains[n].rules {
			if counters {
				b.WriteString("[0:0] ")
			}
			b.WriteString("-A " + n + " " + saveArgs(r) + "\n")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String(), nil
}

// saveArgs prints a rule as iptables-save does: the strings of --comment
// and --u32 in double quotes (with \, " and ' escaped by a backslash)
// unless they consist of letters, digits, "-" and "_" only, as libxtables'
// xtables_save_string prints them; everything else bare.
func saveArgs(r []string) string {
	out := make([]string, len(r))
	for i, a := range r {
		out[i] = a
		if i > 0 && (r[i-1] == "--comment" || r[i-1] == "--u32") && !bare(a) {
			out[i] = `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, `'`, `\'`).Replace(a) + `"`
		}
	}
	return strings.Join(out, " ")
}

func bare(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if !(c == '-' || c == '_' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			return false
		}
	}
	return true
}
