package iptables

import (
	"bufio"
	"context"
	"fmt"
	"strconv"
	"strings"
)

// RuleCounter is one rule of an `iptables-save -c` dump with its counters.
type RuleCounter struct {
	Chain   string
	Args    []string // what followed "-A <chain>"
	Packets uint64
	Bytes   uint64
}

// ParseCounters returns the rules of table in an `iptables-save -c` dump,
// in order, with their counters.
func ParseCounters(text, table string) ([]RuleCounter, error) {
	var out []RuleCounter
	in := false
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			in = line[1:] == table
		case line == "COMMIT":
			in = false
		case in && strings.HasPrefix(line, "["):
			end := strings.Index(line, "]")
			if end < 0 {
				return nil, fmt.Errorf("iptables-save -c: bad line %q", line)
			}
			pk, by, ok := strings.Cut(line[1:end], ":")
			p, err1 := strconv.ParseUint(pk, 10, 64)
			b, err2 := strconv.ParseUint(by, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				return nil, fmt.Errorf("iptables-save -c: bad counters in %q", line)
			}
			args, err := SplitArgs(strings.TrimSpace(line[end+1:]))
			if err != nil {
				return nil, err
			}
			if len(args) < 2 || args[0] != "-A" {
				continue
			}
			out = append(out, RuleCounter{Chain: args[1], Args: args[2:], Packets: p, Bytes: b})
		}
	}
	return out, sc.Err()
}

// IPSetSaveNamed returns `ipset save` of the named sets only; sets that do
// not exist are left out.
func (r Runner) IPSetSaveNamed(ctx context.Context, names ...string) (string, error) {
	var b strings.Builder
	for _, n := range names {
		out, err := r.run(ctx, "", "ipset", "save", n)
		if err != nil {
			if strings.Contains(err.Error(), "does not exist") {
				continue
			}
			return "", fmt.Errorf("ipset save %s: %w", n, err)
		}
		b.WriteString(out)
	}
	return b.String(), nil
}
