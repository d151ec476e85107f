package table

import (
	"context"
	"fmt"
	"slices"
	"strings"
)

// IPSetRestore loads text as `ipset restore` does (create, add, del,
// flush, swap, destroy, with -exist), command by command: a failing one
// stops the load with the earlier ones applied.
func (f *Fake) IPSetRestore(_ context.Context, text string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for n, line := range strings.Split(text, "\n") {
		fs := strings.Fields(line)
		exist := slices.Contains(fs, "-exist")
		fs = slices.DeleteFunc(fs, func(s string) bool { return s == "-exist" })
		if len(fs) == 0 {
			continue
		}
		if err := f.setCommand(fs, exist); err != nil {
			return fmt.Errorf("ipset restore (fake): line %d: %w", n+1, err)
		}
	}
	f.SetRestores++
	return nil
}

func (f *Fake) setCommand(fs []string, exist bool) error {
	if len(fs) < 2 {
		return fmt.Errorf("bad command %v", fs)
	}
	name := fs[1]
	s := f.sets[name]
	if s == nil && fs[0] != "create" {
		return fmt.Errorf("%s: set %s does not exist", fs[0], name)
	}
	switch fs[0] {
	case "create":
		if s != nil {
			if exist {
				return nil
			}
			return fmt.Errorf("create: set %s exists", name)
		}
		if len(fs) < 3 {
			return fmt.Errorf("create %s: no type", name)
		}
		f.sets[name] = &fakeSet{typ: fs[2], opts: strings.Join(fs[3:], " ")}
	case "add":
		m := strings.Join(fs[2:], " ")
		if slices.Contains(s.members, m) {
			if exist {
				return nil
			}
			return fmt.Errorf("add %s %s: already a member", name, m)
		}
		s.members = append(s.members, m)
	case "del":
		m := strings.Join(fs[2:], " ")
		s.members = slices.DeleteFunc(s.members, func(x string) bool { return x == m })
	case "flush":
		s.members = nil
	case "swap":
		o := f.sets[fs[len(fs)-1]]
		if o == nil || len(fs) != 3 {
			return fmt.Errorf("swap %v: no such set", fs[1:])
		}
		f.sets[name], f.sets[fs[2]] = o, s
	case "destroy":
		if f.setInUse(name) {
			return fmt.Errorf("destroy %s: set in use by a rule", name)
		}
		delete(f.sets, name)
	default:
		return fmt.Errorf("unsupported command %v", fs)
	}
	return nil
}

func (f *Fake) setInUse(name string) bool {
	for _, t := range f.tables {
		for _, c := range t.chains {
			for _, r := range c.rules {
				if i := slices.Index(r, "--match-set"); i >= 0 && i+1 < len(r) && r[i+1] == name {
					return true
				}
			}
		}
	}
	return false
}

// IPSetSave returns every set as `ipset save` prints it (sets by name,
// members sorted).
func (f *Fake) IPSetSave(ctx context.Context) (string, error) {
	f.mu.Lock()
	names := make([]string, 0, len(f.sets))
	for n := range f.sets {
		names = append(names, n)
	}
	f.mu.Unlock()
	slices.Sort(names)
	return f.IPSetSaveNamed(ctx, names...)
}

// IPSetSaveNamed returns `ipset save` of the named sets that exist.
func (f *Fake) IPSetSaveNamed(_ context.Context, names ...string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, n := range names {
		s := f.sets[n]
		if s == nil {
			continue
		}
		b.WriteString(strings.TrimSpace("create "+n+" "+s.typ+" "+s.opts) + "\n")
		for _, m := range slices.Sorted(slices.Values(s.members)) {
			b.WriteString("add " + n + " " + m + "\n")
		}
	}
	return b.String(), nil
}
