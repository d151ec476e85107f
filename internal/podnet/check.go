package podnet

import (
	"context"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Check verifies that the attachment described by prevResult still exists:
// IPAM agrees, the pod interface is in the netns with its addresses and
// routes, and the host veth is attached to the bridge.
func (p *Plugin) Check(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	if conf.PrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult: missing (CHECK needs it)", "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
	}
	if err := p.ipamFor(conf).Check(ctx, args); err != nil {
		return cniErr(types.ErrInternal, err, "ipam %s CHECK", conf.IPAM.Type)
	}
	podIdx := -1
	for i, ifc := range prev.Interfaces {
		if ifc.Name == args.IfName && ifc.Sandbox != "" {
			podIdx = i
		}
	}
	if podIdx < 0 {
		return types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("prevResult.interfaces: no interface %q with a sandbox", args.IfName), "")
	}
	var ips []*current.IPConfig
	for _, ip := range prev.IPs {
		if ip.Interface != nil && *ip.Interface == podIdx {
			ips = append(ips, ip)
		}
	}
	if err := checkHost(conf, args); err != nil {
		return types.NewError(types.ErrInternal, err.Error(), "")
	}
	err = ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
		return checkPod(args.IfName, prev.Interfaces[podIdx].Mac, ips, prev.Routes)
	})
	if err != nil {
		return cniErr(types.ErrInternal, err, "CHECK pod %s", args.IfName)
	}
	return nil
}

// checkHost verifies the host veth exists and is a port of the bridge.
func checkHost(conf *NetConf, args *skel.CmdArgs) error {
	node, err := netlinkx.NewHandle()
	if err != nil {
		return err
	}
	defer node.Close()
	br, err := lookupBridge(node, conf.Bridge)
	if err != nil {
		return err
	}
	if br == nil {
		return fmt.Errorf("bridge %s: missing", conf.Bridge)
	}
	name := HostVethName(args.ContainerID, args.IfName)
	l, err := node.LinkByName(name)
	if err != nil {
		return fmt.Errorf("host veth %s: %w", name, err)
	}
	if l.Attrs().MasterIndex != br.Attrs().Index {
		return fmt.Errorf("host veth %s is not attached to bridge %s", name, conf.Bridge)
	}
	return nil
}

// checkPod runs inside the pod netns.
func checkPod(ifName, mac string, ips []*current.IPConfig, routes []*types.Route) error {
	h, err := netlinkx.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("interface %s: %w", ifName, err)
	}
	if mac != "" && link.Attrs().HardwareAddr.String() != mac {
		return fmt.Errorf("interface %s: mac %s, prevResult says %s", ifName, link.Attrs().HardwareAddr, mac)
	}
	addrs, err := h.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", ifName, err)
	}
	for _, ip := range ips {
		found := false
		for _, a := range addrs {
			if a.IPNet.String() == ip.Address.String() {
				found = true
			}
		}
		if !found {
			return fmt.Errorf("interface %s: address %s missing", ifName, ip.Address.String())
		}
	}
	all, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if !routePresent(all, r) {
			return fmt.Errorf("route %s via %v missing", r.Dst.String(), r.GW)
		}
	}
	return nil
}

// routePresent reports whether want is among have (a nil Dst is a default
// route; a nil gateway matches any).
func routePresent(have []netlink.Route, want *types.Route) bool {
	wantOnes, wantBits := want.Dst.Mask.Size()
	for _, r := range have {
		var dst net.IPNet
		if r.Dst != nil {
			dst = *r.Dst
		} else if want.Dst.IP.To4() != nil {
			dst = net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
		} else {
			dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		ones, bits := dst.Mask.Size()
		if ones != wantOnes || bits != wantBits || !dst.IP.Equal(want.Dst.IP.Mask(want.Dst.Mask)) {
			continue
		}
		if want.GW == nil || want.GW.Equal(r.Gw) {
			return true
		}
	}
	return false
}
