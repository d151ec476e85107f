package podnet

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/netlinkx"
)

// Add wires the pod into the bridge. On any failure after the IPAM
// allocation it deletes the veth and releases the allocation.
func (p *Plugin) Add(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	if err := validIfName(args.IfName); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_IFNAME %q: %v", args.IfName, err), "")
	}
	podNS, err := ns.GetNS(args.Netns)
	if err != nil {
		return types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("CNI_NETNS %q: %v", args.Netns, err), "")
	}
	defer podNS.Close()

	node, err := netlinkx.NewHandle()
	if err != nil {
		return cniErr(types.ErrInternal, err, "node netlink")
	}
	defer node.Close()

	mtu := podMTU(node, conf)
	br, err := ensureBridge(node, conf.Bridge, mtu)
	if err != nil {
		return cniErr(types.ErrInternal, err, "bridge")
	}

	// From before the allocation until the record is written (or the
	// allocation undone), weftd sees this container's ADD in progress and
	// never takes its fresh address for a leak (endpoint.LockAdd).
	if conf.EndpointDir != "" {
		lk, err := lockAdd(ctx, conf.EndpointDir, args.ContainerID, addLockTimeout)
		if err != nil {
			return err
		}
		defer lk.Unlock()
	}
	ipam := p.ipamFor(conf)
	ires, err := ipam.Add(ctx, args)
	if err != nil {
		return cniErr(types.ErrInternal, err, "ipam %s ADD", conf.IPAM.Type)
	}
	if len(ires.IPs) == 0 {
		p.undo(ctx, ipam, args, "")
		return types.NewError(types.ErrInternal, fmt.Sprintf("ipam %s returned no addresses", conf.IPAM.Type), "")
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	at := &attachment{conf: conf, args: args, podNS: podNS, node: node, bridge: br, hostName: hostName, mtu: mtu}
	if res, err := at.existing(ires); err != nil || res != nil {
		// A duplicate ADD of a live attachment: answer from what is there,
		// and never undo (that would tear down a running pod).
		if err != nil {
			return cniErr(types.ErrInternal, err, "ADD")
		}
		return p.finishExisting(ctx, conf, args, hostName, res)
	}
	res, err := p.wireAdmitted(ctx, at, ipam, ires)
	if err != nil {
		return err
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// wireAdmitted wires the attachment and has weftd admit it. The record is
// written as soon as the host end exists (weftd needs nothing more), so
// weftd's policy and shaping run while the pod end is configured and
// ipMasq written. On any failure it undoes everything (record, veth,
// allocation, weftd's shaping) and returns the first error.
func (p *Plugin) wireAdmitted(ctx context.Context, at *attachment, ipam IPAM, ires *current.Result) (*current.Result, error) {
	conf, hostName := at.conf, at.hostName
	var waited chan error
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res, err := at.wire(ires, func(res *current.Result) error {
		if err := recordEndpoint(conf, at.args, hostName, res); err != nil {
			return err
		}
		waited = make(chan error, 1)
		go func() { waited <- waitWeftd(wctx, conf, hostName) }()
		return nil
	})
	err = cniErr(types.ErrInternal, err, "ADD")
	if err == nil && conf.IPMasq {
		err = cniErr(types.ErrInternal, ensureMasq(ctx, res.IPs), "ipMasq")
	}
	if err != nil {
		cancel() // the ADD failed already: undo now, not after weftd's answer (up to 10 s)
	}
	if waited != nil {
		if werr := <-waited; err == nil {
			err = werr
		}
	}
	if err == nil {
		return res, nil
	}
	_ = forgetEndpoint(conf, hostName)
	p.undo(ctx, ipam, at.args, hostName)
	if waited != nil {
		releaseShaping(ctx, conf, hostName)
	}
	return nil, err
}

// finishExisting completes a duplicate ADD of a live attachment: the
// record and the policy wait are idempotent; failures are reported without
// undoing anything.
func (p *Plugin) finishExisting(ctx context.Context, conf *NetConf, args *skel.CmdArgs, hostName string, res *current.Result) error {
	p.log.Info("ADD of an attachment that is already wired: returning its result", "container", args.ContainerID, "ifname", args.IfName, "veth", hostName)
	if conf.IPMasq {
		if err := ensureMasq(ctx, res.IPs); err != nil {
			return cniErr(types.ErrInternal, err, "ipMasq")
		}
	}
	if err := recordEndpoint(conf, args, hostName, res); err != nil {
		return err
	}
	if err := waitWeftd(ctx, conf, hostName); err != nil {
		return err
	}
	return types.PrintResult(res, conf.CNIVersion)
}

// undo releases the allocation and deletes the host veth (which takes the
// pod end with it). Errors are logged: the caller reports the first failure.
func (p *Plugin) undo(ctx context.Context, ipam IPAM, args *skel.CmdArgs, hostName string) {
	if hostName != "" {
		if err := netlinkx.DelLinkByName(hostName); err != nil && !netlinkx.IsNotFound(err) {
			p.log.Warn("undo ADD: delete veth", "veth", hostName, "err", err)
		}
	}
	if err := ipam.Del(ctx, args); err != nil {
		p.log.Warn("undo ADD: release address", "container", args.ContainerID, "err", err)
	}
}

// attachment is what ADD knows once the bridge exists.
type attachment struct {
	conf     *NetConf
	args     *skel.CmdArgs
	podNS    ns.NetNS
	node     *netlinkx.Handle // netlink in the node (current) netns
	bridge   netlink.Link
	hostName string
	mtu      int
}

// wire creates the veth pair and configures both ends from the IPAM
// result; it returns the plugin's result. hostReady, called with that
// result as soon as the veth pair exists (before the gateway, the host
// end's sysctls and the pod end are configured), may start what needs
// only the host end.
func (a *attachment) wire(ires *current.Result, hostReady func(*current.Result) error) (*current.Result, error) {
	conf, args, podNS, node, br, hostName, mtu := a.conf, a.args, a.podNS, a.node, a.bridge, a.hostName, a.mtu
	fillGateways(conf, ires.IPs)
	hostMAC, podMAC := randomMAC(), randomMAC()
	spec := netlinkx.VethSpec{
		Name: hostName, MAC: hostMAC, MasterIndex: br.Attrs().Index, MTU: mtu,
		PeerName: args.IfName, PeerMAC: podMAC, PeerNSFd: int(podNS.Fd()),
		Group: NetworkGroup(conf.Name),
	}
	if err := netlinkx.CreateVeth(spec); err != nil {
		if !errors.Is(err, unix.EEXIST) {
			return nil, err
		}
		// A leftover of an earlier, interrupted ADD of this attachment:
		// replace it.
		if derr := netlinkx.DelLinkByName(hostName); derr != nil {
			return nil, err
		}
		if err := netlinkx.CreateVeth(spec); err != nil {
			return nil, err
		}
	}
	// weftd needs only the host end and the result: from here its policy
	// and shaping run while the rest is configured.
	routes := podRoutes(conf, ires)
	res := a.result(ires, routes, hostMAC, podMAC, mtu)
	if err := hostReady(res); err != nil {
		return nil, err
	}
	if conf.Gateway() {
		if err := ensureGateways(node, br, ires.IPs); err != nil {
			return nil, err
		}
		if err := enableForwarding(ires.IPs); err != nil {
			return nil, err
		}
	}
	v6 := hasIPv6(ires.IPs)
	if !v6 {
		// Before the pod end goes up (carrier), so the host end never
		// gets a link-local address either.
		if err := disableIPv6(hostName); err != nil {
			return nil, err
		}
	}
	if conf.Hairpin() {
		hl, err := node.LinkByName(hostName)
		if err != nil {
			return nil, fmt.Errorf("look up %s: %w", hostName, err)
		}
		if err := netlinkx.Do(func() error { return node.Raw().LinkSetHairpin(hl, true) }); err != nil {
			return nil, fmt.Errorf("hairpin on %s: %w", hostName, err)
		}
	}
	if err := configurePod(podNS, args.IfName, ires.IPs, routes, v6); err != nil {
		return nil, err
	}
	return res, nil
}

// result is the plugin's result for the wired attachment.
func (a *attachment) result(ires *current.Result, routes []*types.Route, hostMAC, podMAC net.HardwareAddr, mtu int) *current.Result {
	res := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{
			{Name: a.bridge.Attrs().Name, Mac: a.bridge.Attrs().HardwareAddr.String()},
			{Name: a.hostName, Mac: hostMAC.String(), Mtu: mtu},
			{Name: a.args.IfName, Mac: podMAC.String(), Mtu: mtu, Sandbox: a.args.Netns},
		},
		Routes: routes,
		DNS:    ires.DNS,
	}
	for _, ip := range ires.IPs {
		c := *ip
		c.Interface = current.Int(2)
		res.IPs = append(res.IPs, &c)
	}
	return res
}

// fillGateways gives every IP without a gateway the first host address of
// its subnet when the bridge acts as gateway.
func fillGateways(conf *NetConf, ips []*current.IPConfig) {
	if !conf.Gateway() {
		return
	}
	for _, ip := range ips {
		if ip.Gateway != nil {
			continue
		}
		gw := append(net.IP(nil), ip.Address.IP.Mask(ip.Address.Mask)...)
		if len(gw) == 0 {
			continue
		}
		gw[len(gw)-1]++
		ip.Gateway = gw
	}
}

// podRoutes returns the IPAM routes plus, with isDefaultGateway, a default
// route per family via the gateway unless IPAM already gave one.
func podRoutes(conf *NetConf, ires *current.Result) []*types.Route {
	routes := append([]*types.Route(nil), ires.Routes...)
	if !conf.IsDefaultGateway {
		return routes
	}
	for _, ip := range ires.IPs {
		v4 := ip.Address.IP.To4() != nil
		dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
		if !v4 {
			dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
		}
		have := false
		for _, r := range routes {
			if ones, _ := r.Dst.Mask.Size(); ones == 0 && (r.Dst.IP.To4() != nil) == v4 {
				have = true
			}
		}
		if !have && ip.Gateway != nil {
			routes = append(routes, &types.Route{Dst: dst, GW: ip.Gateway})
		}
	}
	return routes
}

// configurePod sets the addresses and routes on the pod's interface,
// through a netlink socket opened inside the pod's namespace. Without v6,
// IPv6 is disabled on the interface before it goes up: no link-local
// address ever exists, and the interface drops every IPv6 packet (policy
// only polices IPv4, so a link-local path would bypass it).
func configurePod(podNS ns.NetNS, ifName string, ips []*current.IPConfig, routes []*types.Route, v6 bool) error {
	if !v6 {
		if err := podNS.Do(func(ns.NetNS) error { return disableIPv6(ifName) }); err != nil {
			return fmt.Errorf("in pod netns: %w", err)
		}
	}
	h, err := podHandle(podNS)
	if err != nil {
		return err
	}
	defer h.Close()
	link, err := h.LinkByName(ifName)
	if err != nil {
		return fmt.Errorf("look up %s in pod netns: %w", ifName, err)
	}
	if err := netlinkx.Do(func() error { return h.Raw().LinkSetUp(link) }); err != nil {
		return fmt.Errorf("set %s up: %w", ifName, err)
	}
	for _, ip := range ips {
		a := &netlink.Addr{IPNet: &ip.Address}
		if ip.Address.IP.To4() == nil {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := netlinkx.Do(func() error { return h.Raw().AddrAdd(link, a) }); err != nil {
			return fmt.Errorf("add address %s to %s: %w", ip.Address.String(), ifName, err)
		}
	}
	return addRoutes(h, link, ips, routes)
}

// addRoutes adds routes via link; routes already there are fine.
func addRoutes(h *netlinkx.Handle, link netlink.Link, ips []*current.IPConfig, routes []*types.Route) error {
	for _, r := range routes {
		gw := r.GW
		if gw == nil {
			gw = gatewayFor(ips, r.Dst.IP)
		}
		rt := &netlink.Route{LinkIndex: link.Attrs().Index, Dst: &r.Dst, Gw: gw, Scope: netlink.SCOPE_UNIVERSE}
		if gw == nil {
			rt.Scope = netlink.SCOPE_LINK
		}
		if r.MTU > 0 {
			rt.MTU = r.MTU
		}
		if r.Priority > 0 {
			rt.Priority = r.Priority
		}
		err := netlinkx.Do(func() error { return h.Raw().RouteAdd(rt) })
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add route %s via %v: %w", r.Dst.String(), gw, err)
		}
	}
	return nil
}

// gatewayFor returns the gateway of the first IP of dst's family.
func gatewayFor(ips []*current.IPConfig, dst net.IP) net.IP {
	v4 := dst.To4() != nil
	for _, ip := range ips {
		if (ip.Address.IP.To4() != nil) == v4 && ip.Gateway != nil {
			return ip.Gateway
		}
	}
	return nil
}

// addLockTimeout bounds the wait for another ADD of the same container
// (a runtime retrying while its first ADD still runs, or one that hangs).
const addLockTimeout = 30 * time.Second

// lockAdd takes the container's ADD lock within timeout; past it the ADD
// fails with code 11 (try again later) instead of blocking for good.
func lockAdd(ctx context.Context, dir, containerID string, timeout time.Duration) (*endpoint.AddLock, error) {
	lctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	lk, err := endpoint.LockAdd(lctx, dir, containerID)
	switch {
	case err == nil:
		return lk, nil
	case errors.Is(err, context.DeadlineExceeded):
		return nil, types.NewError(types.ErrTryAgainLater, "another ADD of this container is still running: "+err.Error(), "")
	default:
		return nil, cniErr(types.ErrIOFailure, err, "endpointDir")
	}
}
