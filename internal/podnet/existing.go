package podnet

import (
	"fmt"
	"net/netip"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/netlinkx"
)

// existing looks for a live attachment of this container and ifname: the
// host veth exists, its peer is the pod's interface in the given netns, and
// that interface holds exactly the addresses IPAM returned. It returns the
// attachment's result then (built from the links, so it equals the first
// ADD's), nil when there is nothing (or only an unconfigured leftover of an
// interrupted ADD, which wire replaces), and an error for a veth that is not
// this pod's or whose addresses disagree with IPAM: that pod is left alone.
func (a *attachment) existing(ires *current.Result) (*current.Result, error) {
	hl, err := a.node.LinkByName(a.hostName)
	if netlinkx.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("look up %s: %w", a.hostName, err)
	}
	h, err := podHandle(a.podNS)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	pl, err := h.LinkByName(a.args.IfName)
	if err != nil && !netlinkx.IsNotFound(err) {
		return nil, fmt.Errorf("look up %s in pod netns: %w", a.args.IfName, err)
	}
	if err != nil || pl.Type() != "veth" || pl.Attrs().Index != hl.Attrs().ParentIndex || pl.Attrs().ParentIndex != hl.Attrs().Index {
		return nil, fmt.Errorf("host veth %s exists but its peer is not %s in %s (another sandbox of container %s?): "+
			"not replacing it; DEL the attachment first", a.hostName, a.args.IfName, a.args.Netns, a.args.ContainerID)
	}
	have, err := podAddrs(h, pl)
	if err != nil {
		return nil, err
	}
	if len(have) == 0 {
		return nil, nil // an interrupted ADD's leftover: nothing runs on it yet
	}
	fillGateways(a.conf, ires.IPs)
	var want []netip.Prefix
	for _, ip := range ires.IPs {
		if p, ok := prefixOf(ip); ok {
			want = append(want, p)
		}
	}
	slices.SortFunc(want, netip.Prefix.Compare)
	if !slices.Equal(have, want) {
		return nil, fmt.Errorf("%s of container %s already holds %v, IPAM returned %v: not rewiring a live pod; DEL it first",
			a.args.IfName, a.args.ContainerID, have, want)
	}
	routes := podRoutes(a.conf, ires)
	// Complete an ADD interrupted after the addresses (routes are idempotent).
	if err := addRoutes(h, pl, ires.IPs, routes); err != nil {
		return nil, err
	}
	return a.result(ires, routes, hl.Attrs().HardwareAddr, pl.Attrs().HardwareAddr, hl.Attrs().MTU), nil
}

// podHandle opens a netlink socket inside podNS.
func podHandle(podNS ns.NetNS) (*netlinkx.Handle, error) {
	var h *netlinkx.Handle
	err := podNS.Do(func(ns.NetNS) error {
		var err error
		h, err = netlinkx.NewHandle()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("netlink in pod netns: %w", err)
	}
	return h, nil
}

// podAddrs returns the global addresses of link, sorted.
func podAddrs(h *netlinkx.Handle, link netlink.Link) ([]netip.Prefix, error) {
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", link.Attrs().Name, err)
	}
	var out []netip.Prefix
	for _, ad := range addrs {
		if ad.IP.IsLinkLocalUnicast() || ad.IP.IsLoopback() {
			continue
		}
		a, ok := netip.AddrFromSlice(ad.IP)
		if !ok {
			continue
		}
		ones, _ := ad.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones))
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	return out, nil
}

func prefixOf(ip *current.IPConfig) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(ip.Address.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := ip.Address.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}
