package table

import (
	"maps"
	"slices"
	"sort"
	"strings"

	"github.com/weftnet/weft/internal/iptables/syntax"
)

// snapshot is what an owner has in the kernel, per table.
type snapshot struct {
	tables map[string]*view
}

type view struct {
	chains  map[string][]string // owned chain -> rule keys in order
	builtin map[string][]placed // built-in chain -> the owner's rules in it
}

// placed is one of the owner's rules in a built-in chain.
type placed struct {
	index int // position in the chain, -1 when not known
	args  []string
	key   string
}

func observe(o Owner, dumps map[string]*syntax.Dump) *snapshot {
	s := &snapshot{tables: map[string]*view{}}
	for _, tb := range o.Tables {
		v := &view{chains: map[string][]string{}, builtin: map[string][]placed{}}
		s.tables[tb] = v
		d := dumps[tb]
		if d == nil {
			continue
		}
		for _, name := range d.Order {
			c := d.Chains[name]
			if o.Owns(name) {
				v.chains[name] = keys(c.Rules)
				continue
			}
			if !c.Builtin {
				continue
			}
			for i, r := range c.Rules {
				if o.Owns(target(r)) {
					v.builtin[name] = append(v.builtin[name], placed{index: i, args: r, key: key(r)})
				}
			}
		}
	}
	return s
}

func keys[R ~[]string](rules []R) []string {
	ks := make([]string, len(rules))
	for i, r := range rules {
		ks[i] = key(r)
	}
	return ks
}

// keyMemo keeps the keys of each chain's rules while the caller hands over
// the same rule slice (a caller that caches unchanged chains, as policy
// does, then costs no key computation per Apply).
type keyMemo map[string]memoKeys

type memoKeys struct {
	rules []Rule
	keys  []string
}

func (m keyMemo) keys(c Chain, next keyMemo) []string {
	if k, ok := m[c.Name]; ok && len(k.rules) == len(c.Rules) && (len(c.Rules) == 0 || &k.rules[0] == &c.Rules[0]) {
		next[c.Name] = k
		return k.keys
	}
	ks := keys(c.Rules)
	next[c.Name] = memoKeys{rules: c.Rules, keys: ks}
	return ks
}

// plan diffs st against cur, table by table in the owner's order.
func plan(o Owner, cur *snapshot, st State, memo keyMemo) Plan {
	next := &snapshot{tables: map[string]*view{}}
	p := Plan{memo: keyMemo{}}
	var b strings.Builder
	var stats Stats
	for _, tb := range o.Tables {
		v := cur.tables[tb]
		if v == nil {
			v = &view{chains: map[string][]string{}, builtin: map[string][]placed{}}
		}
		nv := &view{chains: maps.Clone(v.chains), builtin: maps.Clone(v.builtin)}
		next.tables[tb] = nv
		b.WriteString(planTable(tb, v, nv, st, &stats, memo, p.memo))
	}
	stats.Restored = b.Len() > 0
	p.Text, p.Stats, p.next = b.String(), stats, next
	return p
}

// planTable returns the restore section of table tb ("" when it matches):
// changed and stale chains declared (which flushes them), the changed
// chains' rules, the jump repairs, then the stale chains deleted (nothing
// refers to them by then).
func planTable(tb string, v, nv *view, st State, stats *Stats, memo, nextMemo keyMemo) string {
	var decl, rules, tail strings.Builder
	want := map[string]bool{}
	for _, c := range st.Chains {
		if c.Table != tb {
			continue
		}
		want[c.Name] = true
		ks := memo.keys(c, nextMemo)
		if have, ok := v.chains[c.Name]; ok && slices.Equal(have, ks) {
			continue
		}
		decl.WriteString(":" + c.Name + " - [0:0]\n")
		for _, r := range c.Rules {
			rules.WriteString("-A " + c.Name + " " + quote(r) + "\n")
		}
		nv.chains[c.Name] = ks
		stats.ChainsWritten++
		stats.Written = append(stats.Written, c.Name)
	}
	stale := slices.DeleteFunc(slices.Sorted(maps.Keys(v.chains)), func(n string) bool { return want[n] })
	for _, name := range stale {
		decl.WriteString(":" + name + " - [0:0]\n")
		tail.WriteString("-X " + name + "\n")
		delete(nv.chains, name)
		stats.ChainsDeleted++
	}
	jumps := map[string][]Jump{}
	for _, j := range st.Jumps {
		if j.Table == tb {
			jumps[j.Chain] = append(jumps[j.Chain], j)
		}
	}
	builtins := slices.Sorted(maps.Keys(jumps))
	for b := range v.builtin {
		if _, ok := jumps[b]; !ok {
			builtins = append(builtins, b)
		}
	}
	sort.Strings(builtins)
	for _, b := range builtins {
		text, next, changed := planJumps(b, v.builtin[b], jumps[b])
		if changed {
			rules.WriteString(text)
			stats.JumpsFixed++
		}
		if len(next) == 0 {
			delete(nv.builtin, b)
		} else {
			nv.builtin[b] = next
		}
	}
	if decl.Len()+rules.Len()+tail.Len() == 0 {
		return ""
	}
	return "*" + tb + "\n" + decl.String() + rules.String() + tail.String() + "COMMIT\n"
}

// planJumps repairs the owner's rules in built-in chain b: have is what the
// kernel holds, want what it should. When any of want is First, all of
// them are kept at the top of b, in order.
func planJumps(b string, have []placed, want []Jump) (string, []placed, bool) {
	if slices.ContainsFunc(want, func(j Jump) bool { return j.Pos == First }) {
		return planFirst(b, have, want)
	}
	var out strings.Builder
	used := make([]bool, len(have))
	var next []placed
	var missing []Jump
	for _, j := range want {
		k := key(j.Rule)
		i := -1
		for n, p := range have {
			if !used[n] && p.key == k {
				i = n
				break
			}
		}
		if i < 0 {
			missing = append(missing, j)
			continue
		}
		used[i] = true
		next = append(next, have[i])
	}
	for i, p := range have {
		if !used[i] {
			out.WriteString("-D " + b + " " + quote(p.args) + "\n")
		}
	}
	for _, j := range missing {
		op := "-I " + b + " 1 "
		if j.Pos == Append {
			op = "-A " + b + " "
		}
		out.WriteString(op + quote(j.Rule) + "\n")
		next = append(next, placed{index: -1, args: j.Rule, key: key(j.Rule)})
	}
	return out.String(), next, out.Len() > 0
}

// planFirst keeps want at the top of b, in order: when the kernel holds
// anything else, every rule of the owner's in b is deleted by its saved
// spec and want is inserted at the top.
func planFirst(b string, have []placed, want []Jump) (string, []placed, bool) {
	next := make([]placed, len(want))
	for i, j := range want {
		next[i] = placed{index: i, args: j.Rule, key: key(j.Rule)}
	}
	ok := len(have) == len(want)
	for i := 0; ok && i < len(have); i++ {
		ok = have[i].index == i && have[i].key == next[i].key
	}
	if ok {
		return "", have, false
	}
	var out strings.Builder
	for _, p := range have {
		out.WriteString("-D " + b + " " + quote(p.args) + "\n")
	}
	for i := len(want) - 1; i >= 0; i-- {
		out.WriteString("-I " + b + " 1 " + quote(want[i].Rule) + "\n")
	}
	return out.String(), next, true
}
