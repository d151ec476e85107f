package podnet

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
)

// MasqChain is weft's nat chain for the plugin's ipMasq (per pod subnet;
// weftd's own masquerade of the cluster network is daemon/masq's
// WEFT-MASQ-CLUSTER). It holds one pair of rules per pod subnet, shared by
// every pod in it, so ADD writes only when a subnet is new and DEL has
// nothing to remove per pod.
const MasqChain = "WEFT-MASQ-SUBNET"

// retiredMasqChain is MasqChain's name before issue 9: an ADD moves its
// rules into MasqChain and deletes it with its jump.
const retiredMasqChain = "WEFT-POSTRTG"

// MasqLock serializes the read-modify-write of MasqChain between
// concurrent ADDs (of pods in different subnets).
const MasqLock = "/run/weft-ipmasq.lock"

var masqOwner = table.Owner{Tables: []string{"nat"}, Names: []string{MasqChain}, Retired: []string{retiredMasqChain}}

// ensureMasq makes traffic from the pods' subnets to anywhere outside them
// (multicast excepted) leave masqueraded, through iptables-restore in the
// iptables mode (legacy or nft) the node uses.
func ensureMasq(ctx context.Context, ips []*current.IPConfig) error {
	mode, err := iptables.Detect(ctx, "")
	if err != nil {
		return err
	}
	unlock, err := lockFile(MasqLock)
	if err != nil {
		return err
	}
	defer unlock()
	var v4, v6 []netip.Prefix
	for _, ip := range ips {
		a, ok := netip.AddrFromSlice(ip.Address.IP)
		if !ok {
			continue
		}
		ones, _ := ip.Address.Mask.Size()
		if a.Unmap().Is4() {
			v4 = append(v4, netip.PrefixFrom(a.Unmap(), ones).Masked())
		} else {
			v6 = append(v6, netip.PrefixFrom(a, ones).Masked())
		}
	}
	if len(v4) > 0 {
		if err := ensureMasqRules(ctx, iptables.Runner{Mode: mode}, v4, "224.0.0.0/4"); err != nil {
			return err
		}
	}
	if len(v6) > 0 {
		return ensureMasqRules(ctx, iptables.Runner{Mode: mode, IPv6: true}, v6, "ff00::/8")
	}
	return nil
}

// ensureMasqRules converges MasqChain of one family to the rules it holds
// (and those of the retired chain) plus a pair for each of subnets.
func ensureMasqRules(ctx context.Context, k table.Kernel, subnets []netip.Prefix, mcast string) error {
	tb := table.New(k, masqOwner)
	dumps, err := tb.Read(ctx)
	if err != nil {
		return fmt.Errorf("ipMasq: %w", err)
	}
	tb.Observe(dumps)
	var rules []table.Rule
	add := func(r []string) {
		if !slices.ContainsFunc(rules, func(x table.Rule) bool { return slices.Equal(x, r) }) {
			rules = append(rules, r)
		}
	}
	for _, name := range []string{MasqChain, retiredMasqChain} {
		if c := dumps["nat"].Chains[name]; c != nil {
			for _, r := range c.Rules {
				add(r)
			}
		}
	}
	for _, s := range subnets {
		add([]string{"-s", s.String(), "-d", s.String(), "-m", "comment", "--comment", "weft: pod to pod", "-j", "RETURN"})
		add([]string{"-s", s.String(), "!", "-d", mcast, "-m", "comment", "--comment", "weft: ipMasq", "-j", "MASQUERADE"})
	}
	st := table.State{
		Chains: []table.Chain{{Table: "nat", Name: MasqChain, Rules: rules}},
		Jumps: []table.Jump{{Table: "nat", Chain: "POSTROUTING", Pos: table.Append,
			Rule: table.Rule{"-m", "comment", "--comment", "weft ipMasq", "-j", MasqChain}}},
	}
	if _, err := tb.Apply(ctx, st, false); err != nil {
		return fmt.Errorf("ipMasq: %w", err)
	}
	return nil
}

// lockFile takes an exclusive flock on path (created when missing).
func lockFile(path string) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("ipMasq lock: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("ipMasq lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}
