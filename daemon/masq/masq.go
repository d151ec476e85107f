// Package masq keeps weftd's two iptables chains: WEFT-MASQ-CLUSTER in
// the nat table (pod traffic leaving the cluster network is masqueraded
// with --random-fully; pod-to-pod traffic never is) and WEFT-FWD-ACCEPT
// in the filter table (accepts forwarding of pod traffic, for hosts whose
// FORWARD policy is DROP). Both are declared as data and converged by one
// internal/iptables/table Apply (one `iptables-restore --noflush`
// transaction when the kernel differs). Only these two chains and one jump
// to each (appended to POSTROUTING and FORWARD, so rules inserted at the
// top, such as NetworkPolicy's, run first) are touched, and the chains of
// the names weftd used before (WEFT-POSTROUTING, WEFT-FORWARD) are removed
// with their jumps.
package masq

import (
	"context"
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/internal/iptables/table"
)

// Chain names.
const (
	// ChainNAT masquerades traffic from the cluster network to anywhere
	// outside it (nat, jumped to from POSTROUTING).
	ChainNAT = "WEFT-MASQ-CLUSTER"
	// ChainForward accepts forwarding of the cluster network's traffic
	// (filter, jumped to from FORWARD after any policy).
	ChainForward = "WEFT-FWD-ACCEPT"

	// Names of the same chains before issue 9, removed on upgrade.
	retiredNAT     = "WEFT-POSTROUTING"
	retiredForward = "WEFT-FORWARD"
)

// Tables is what masq needs from iptables; iptables.Runner satisfies it.
type Tables = table.Kernel

// owner is what masq owns.
var owner = table.Owner{
	Tables:  []string{"nat", "filter"},
	Names:   []string{ChainNAT, ChainForward},
	Retired: []string{retiredNAT, retiredForward},
}

// desired returns the chains for network, in iptables-save's canonical
// form so the kernel's read-back compares equal.
func desired(network netip.Prefix) table.State {
	n := network.String()
	return table.State{
		Chains: []table.Chain{
			{Table: "nat", Name: ChainNAT, Rules: []table.Rule{
				{"-s", n, "-d", n, "-m", "comment", "--comment", "weft: pod to pod, no SNAT", "-j", "RETURN"},
				{"-s", n, "!", "-d", "224.0.0.0/4", "-m", "comment", "--comment", "weft: pod to outside", "-j", "MASQUERADE", "--random-fully"},
			}},
			{Table: "filter", Name: ChainForward, Rules: []table.Rule{
				{"-s", n, "-m", "comment", "--comment", "weft: from pods", "-j", "ACCEPT"},
				{"-d", n, "-m", "comment", "--comment", "weft: to pods", "-j", "ACCEPT"},
			}},
		},
		Jumps: []table.Jump{
			{Table: "nat", Chain: "POSTROUTING", Pos: table.Append,
				Rule: table.Rule{"-m", "comment", "--comment", "weft: masquerade pod traffic", "-j", ChainNAT}},
			{Table: "filter", Chain: "FORWARD", Pos: table.Append,
				Rule: table.Rule{"-m", "comment", "--comment", "weft: forward pod traffic", "-j", ChainForward}},
		},
	}
}

// Masq converges weftd's chains for one cluster network.
type Masq struct {
	t       *table.Table
	network netip.Prefix
}

// New returns a Masq for network.
func New(t Tables, network netip.Prefix) *Masq {
	return &Masq{t: table.New(t, owner), network: network}
}

// Apply reads both tables back and repairs whatever differs. It reports
// whether it wrote.
func (m *Masq) Apply(ctx context.Context) (bool, error) {
	st, err := m.t.Apply(ctx, desired(m.network), true)
	if err != nil {
		return false, fmt.Errorf("masq: %w", err)
	}
	return st.Restored, nil
}

// Remove deletes the jumps and both chains (and those of the old names).
func (m *Masq) Remove(ctx context.Context) error {
	if err := m.t.Remove(ctx); err != nil {
		return fmt.Errorf("masq: remove: %w", err)
	}
	return nil
}

// Network returns the cluster network the rules are for.
func (m *Masq) Network() netip.Prefix { return m.network }
