package podnet

import (
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/coreos/go-iptables/iptables"
)

// MasqChain is weft's nat chain for ipMasq. It holds one pair of rules per
// pod subnet, shared by every pod in it, so ADD writes only when a subnet is
// new and DEL has nothing to remove per pod.
const MasqChain = "WEFT-POSTRTG"

// ensureMasq makes traffic from the pods' subnets to anywhere outside them
// (multicast excepted) leave masqueraded.
func ensureMasq(ips []*current.IPConfig) error {
	for _, ip := range ips {
		proto, mcast := iptables.ProtocolIPv4, "224.0.0.0/4"
		if ip.Address.IP.To4() == nil {
			proto, mcast = iptables.ProtocolIPv6, "ff00::/8"
		}
		ipt, err := iptables.NewWithProtocol(proto)
		if err != nil {
			return fmt.Errorf("iptables: %w", err)
		}
		subnet := (&net.IPNet{IP: ip.Address.IP.Mask(ip.Address.Mask), Mask: ip.Address.Mask}).String()
		want := [][]string{
			{"-s", subnet, "-d", subnet, "-m", "comment", "--comment", "weft: pod to pod", "-j", "RETURN"},
			{"-s", subnet, "!", "-d", mcast, "-m", "comment", "--comment", "weft: ipMasq", "-j", "MASQUERADE"},
		}
		if err := ensureRules(ipt, want); err != nil {
			return err
		}
	}
	return nil
}

// ensureRules creates the chain and its jump from POSTROUTING when
// missing and appends the rules not yet present. Steady state costs one
// existence check per rule.
func ensureRules(ipt *iptables.IPTables, rules [][]string) error {
	exists, err := ipt.ChainExists("nat", MasqChain)
	if err != nil {
		return fmt.Errorf("iptables nat %s: %w", MasqChain, err)
	}
	if !exists {
		if err := ipt.NewChain("nat", MasqChain); err != nil {
			// A concurrent ADD may have created it.
			if ok, _ := ipt.ChainExists("nat", MasqChain); !ok {
				return fmt.Errorf("create chain nat %s: %w", MasqChain, err)
			}
		}
	}
	jump := []string{"-m", "comment", "--comment", "weft ipMasq", "-j", MasqChain}
	if err := ipt.AppendUnique("nat", "POSTROUTING", jump...); err != nil {
		return fmt.Errorf("jump to %s: %w", MasqChain, err)
	}
	for _, r := range rules {
		if err := ipt.AppendUnique("nat", MasqChain, r...); err != nil {
			return fmt.Errorf("rule in %s: %w", MasqChain, err)
		}
	}
	return nil
}
