// Package masq keeps weftd's two iptables chains: WEFT-POSTROUTING in the
// nat table (pod traffic leaving the cluster network is masqueraded with
// --random-fully; pod-to-pod traffic never is) and WEFT-FORWARD in the
// filter table (accepts forwarding of pod traffic, for hosts whose FORWARD
// policy is DROP). Each sync compares the kernel with the desired rules and,
// when they differ, loads one `iptables-restore --noflush` transaction.
// Only these two chains and one jump to each (appended to POSTROUTING and
// FORWARD, so rules inserted at the top, such as NetworkPolicy's, run
// first) are touched.
package masq

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weftnet/weft/internal/iptables"
)

// Chain names.
const (
	ChainNAT     = "WEFT-POSTROUTING"
	ChainForward = "WEFT-FORWARD"
)

// Tables is what masq needs from iptables; iptables.Runner satisfies it.
type Tables interface {
	Restore(ctx context.Context, text string) error
	Save(ctx context.Context, table string) (string, error)
}

// table is the desired content of one table: our chain's rules and the
// jump to it from a built-in chain.
type table struct {
	name    string
	builtin string
	chain   string
	jump    []string
	rules   [][]string
}

// Desired returns the rules for network, in iptables-save's canonical form
// so the kernel's read-back compares equal.
func desired(network netip.Prefix) []table {
	n := network.String()
	return []table{
		{
			name: "nat", builtin: "POSTROUTING", chain: ChainNAT,
			jump: []string{"-m", "comment", "--comment", "weft: masquerade pod traffic", "-j", ChainNAT},
			rules: [][]string{
				{"-s", n, "-d", n, "-m", "comment", "--comment", "weft: pod to pod, no SNAT", "-j", "RETURN"},
				{"-s", n, "!", "-d", "224.0.0.0/4", "-m", "comment", "--comment", "weft: pod to outside", "-j", "MASQUERADE", "--random-fully"},
			},
		},
		{
			name: "filter", builtin: "FORWARD", chain: ChainForward,
			jump: []string{"-m", "comment", "--comment", "weft: forward pod traffic", "-j", ChainForward},
			rules: [][]string{
				{"-s", n, "-m", "comment", "--comment", "weft: from pods", "-j", "ACCEPT"},
				{"-d", n, "-m", "comment", "--comment", "weft: to pods", "-j", "ACCEPT"},
			},
		},
	}
}

// Render returns the restore text that makes the kernel match, given the
// current dumps of each table (nil dump = table unread/empty). It returns
// "" when nothing differs. Pure.
func render(network netip.Prefix, dumps map[string]*iptables.Dump) string {
	var b strings.Builder
	for _, t := range desired(network) {
		d := dumps[t.name]
		var have [][]string
		jumps := 0
		if d != nil {
			if c := d.Chains[t.chain]; c != nil {
				have = c.Rules
			}
			if c := d.Chains[t.builtin]; c != nil {
				for _, r := range c.Rules {
					if isJumpTo(r, t.chain) {
						jumps++
					}
				}
			}
		}
		exists := d != nil && d.Chains[t.chain] != nil
		if exists && jumps == 1 && equalRules(have, t.rules) {
			continue
		}
		fmt.Fprintf(&b, "*%s\n:%s - [0:0]\n", t.name, t.chain)
		for _, r := range t.rules {
			fmt.Fprintf(&b, "-A %s %s\n", t.chain, join(r))
		}
		if jumps == 0 {
			fmt.Fprintf(&b, "-A %s %s\n", t.builtin, join(t.jump))
		}
		for i := 1; i < jumps; i++ {
			fmt.Fprintf(&b, "-D %s %s\n", t.builtin, join(t.jump))
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

func isJumpTo(r []string, chain string) bool {
	i := slices.Index(r, "-j")
	return i >= 0 && i+1 < len(r) && r[i+1] == chain
}

func equalRules(a, b [][]string) bool {
	return slices.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
}

func join(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = iptables.Quote(a)
	}
	return strings.Join(q, " ")
}

// Masq converges weftd's chains for one cluster network.
type Masq struct {
	t       Tables
	network netip.Prefix
}

// New returns a Masq for network.
func New(t Tables, network netip.Prefix) *Masq {
	return &Masq{t: t, network: network}
}

func (m *Masq) read(ctx context.Context) (map[string]*iptables.Dump, error) {
	dumps := map[string]*iptables.Dump{}
	for _, tb := range []string{"nat", "filter"} {
		out, err := m.t.Save(ctx, tb)
		if err != nil {
			return nil, fmt.Errorf("masq: read %s table: %w", tb, err)
		}
		d, err := iptables.ParseSave(out, tb)
		if err != nil {
			return nil, fmt.Errorf("masq: parse %s table: %w", tb, err)
		}
		dumps[tb] = d
	}
	return dumps, nil
}

// Apply reads both tables back and repairs whatever differs. It reports
// whether it wrote.
func (m *Masq) Apply(ctx context.Context) (bool, error) {
	dumps, err := m.read(ctx)
	if err != nil {
		return false, err
	}
	text := render(m.network, dumps)
	if text == "" {
		return false, nil
	}
	if err := m.t.Restore(ctx, text); err != nil {
		return false, fmt.Errorf("masq: %w", err)
	}
	return true, nil
}

// Remove deletes the jumps and both chains.
func (m *Masq) Remove(ctx context.Context) error {
	dumps, err := m.read(ctx)
	if err != nil {
		return err
	}
	var b strings.Builder
	for _, t := range desired(m.network) {
		d := dumps[t.name]
		if d == nil {
			continue
		}
		var lines []string
		if c := d.Chains[t.builtin]; c != nil {
			for _, r := range c.Rules {
				if isJumpTo(r, t.chain) {
					lines = append(lines, fmt.Sprintf("-D %s %s", t.builtin, join(r)))
				}
			}
		}
		if d.Chains[t.chain] != nil {
			lines = append(lines, "-F "+t.chain, "-X "+t.chain)
		}
		if len(lines) > 0 {
			fmt.Fprintf(&b, "*%s\n%s\nCOMMIT\n", t.name, strings.Join(lines, "\n"))
		}
	}
	if b.Len() == 0 {
		return nil
	}
	if err := m.t.Restore(ctx, b.String()); err != nil {
		return fmt.Errorf("masq: remove: %w", err)
	}
	return nil
}

// Network returns the cluster network the rules are for.
func (m *Masq) Network() netip.Prefix { return m.network }
