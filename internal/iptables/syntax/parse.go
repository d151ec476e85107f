// Package syntax is the text of iptables-restore and ipset input and of
// iptables-save / ipset save output, without running either: quoting and
// splitting rule lines, bounding rule comments to what the kernel keeps, and
// parsing dumps. It does no I/O, so the pure policy renderer can use it.
package syntax

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// Chain is one chain of an iptables-save dump: its rules as the argument
// lists that followed "-A <chain>".
type Chain struct {
	Name    string
	Builtin bool
	Rules   [][]string
	// Packets holds each rule's packet counter when the dump was made with
	// `iptables-save -c` (lines "[packets:bytes] -A ..."), else nil.
	Packets []uint64
}

// Dump is one table of an iptables-save output.
type Dump struct {
	Table  string
	Order  []string // chain names in declaration order
	Chains map[string]*Chain
}

// ParseSave parses the given table out of iptables-save output.
func ParseSave(text, table string) (*Dump, error) {
	d := &Dump{Table: table, Chains: map[string]*Chain{}}
	in := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			in = line[1:] == table
		case !in:
		case line == "COMMIT":
			in = false
		case strings.HasPrefix(line, ":"):
			f := strings.Fields(line[1:])
			if len(f) == 0 {
				return nil, fmt.Errorf("iptables-save: bad chain line %q", line)
			}
			c := &Chain{Name: f[0], Builtin: len(f) > 1 && f[1] != "-"}
			d.Chains[c.Name] = c
			d.Order = append(d.Order, c.Name)
		case strings.HasPrefix(line, "-A ") || strings.HasPrefix(line, "["):
			pkts, line, counted, err := cutCounters(line)
			if err != nil {
				return nil, err
			}
			args, err := SplitArgs(line)
			if err != nil {
				return nil, err
			}
			if len(args) < 2 {
				return nil, fmt.Errorf("iptables-save: bad rule %q", line)
			}
			c := d.Chains[args[1]]
			if c == nil {
				c = &Chain{Name: args[1]}
				d.Chains[c.Name] = c
				d.Order = append(d.Order, c.Name)
			}
			if counted {
				for len(c.Packets) < len(c.Rules) {
					c.Packets = append(c.Packets, 0)
				}
				c.Packets = append(c.Packets, pkts)
			}
			c.Rules = append(c.Rules, args[2:])
		}
	}
	return d, sc.Err()
}

// cutCounters splits "[packets:bytes] -A ..." (iptables-save -c) into the
// packet count and the rule; lines without counters pass unchanged.
func cutCounters(line string) (pkts uint64, rest string, counted bool, err error) {
	if !strings.HasPrefix(line, "[") {
		return 0, line, false, nil
	}
	head, rest, ok := strings.Cut(line[1:], "] ")
	p, _, ok2 := strings.Cut(head, ":")
	if ok && ok2 {
		pkts, err = strconv.ParseUint(p, 10, 64)
	}
	if !ok || !ok2 || err != nil || !strings.HasPrefix(rest, "-A ") {
		return 0, "", false, fmt.Errorf("iptables-save: bad counted rule %q", line)
	}
	return pkts, rest, true, nil
}

// SplitArgs splits a rule line the way iptables-restore does: on spaces,
// honouring double quotes with backslash escapes.
func SplitArgs(line string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inQ, have := false, false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case inQ && c == '\\' && i+1 < len(line):
			i++
			cur.WriteByte(line[i])
		case c == '"':
			inQ, have = !inQ, true
		case !inQ && (c == ' ' || c == '\t'):
			if have {
				out = append(out, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if inQ {
		return nil, fmt.Errorf("iptables: unterminated quote in %q", line)
	}
	if have {
		out = append(out, cur.String())
	}
	return out, nil
}

// Quote renders one argument for iptables-restore input.
func Quote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\"\\'") {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 4)
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		if s[i] == '"' || s[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	b.WriteByte('"')
	return b.String()
}

// Comment returns the text of the first "-m comment --comment X" in args.
func Comment(args []string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--comment" {
			return args[i+1]
		}
	}
	return ""
}

// IPSet is one set of an `ipset save` dump.
type IPSet struct {
	Name    string
	Type    string
	Options []string
	Members []string // as printed, e.g. "10.0.0.0/8" or "10.1.0.0/16 nomatch"
}

// ParseIPSetSave parses `ipset save` output.
func ParseIPSetSave(text string) (map[string]*IPSet, error) {
	sets := map[string]*IPSet{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		switch f[0] {
		case "create":
			if len(f) < 3 {
				return nil, fmt.Errorf("ipset save: bad line %q", sc.Text())
			}
			sets[f[1]] = &IPSet{Name: f[1], Type: f[2], Options: f[3:]}
		case "add":
			s := sets[f[1]]
			if s == nil || len(f) < 3 {
				return nil, fmt.Errorf("ipset save: add before create: %q", sc.Text())
			}
			s.Members = append(s.Members, strings.Join(f[2:], " "))
		}
	}
	return sets, sc.Err()
}
