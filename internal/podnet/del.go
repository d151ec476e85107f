package podnet

import (
	"context"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Del removes the attachment. It is idempotent: a missing netns, a missing
// link or a container never added all succeed. The host veth is found by
// its deterministic name, so the pod's netns is never needed; deleting it
// removes the pod end too. The veth goes before the address is released,
// so the address is never handed out while still configured.
func (p *Plugin) Del(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.IfName == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: missing", "")
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	if err := netlinkx.DelLinkByName(hostName); err != nil && !netlinkx.IsNotFound(err) {
		return cniErr(types.ErrInternal, err, "delete veth %s", hostName)
	}
	if err := p.ipamFor(conf).Del(ctx, args); err != nil {
		return cniErr(types.ErrInternal, err, "ipam %s DEL", conf.IPAM.Type)
	}
	if err := forgetEndpoint(conf, hostName); err != nil {
		return cniErr(types.ErrIOFailure, err, "endpointDir")
	}
	return nil
}

// GC releases the IPAM allocations of every attachment not listed in
// cni.dev/valid-attachments and deletes weft's host veths on this network's
// bridge that belong to none of them (left by a crashed ADD or a runtime
// that lost its cache).
func (p *Plugin) GC(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	var errs []string
	if err := p.ipamFor(conf).GC(ctx, args); err != nil {
		errs = append(errs, fmt.Sprintf("ipam %s GC: %v", conf.IPAM.Type, err))
	}
	if err := gcVeths(conf); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrInternal, strings.Join(errs, "; "), "")
	}
	return nil
}

// gcVeths deletes stale host veths attached to conf's bridge.
func gcVeths(conf *NetConf) error {
	node, err := netlinkx.NewHandle()
	if err != nil {
		return err
	}
	defer node.Close()
	br, err := lookupBridge(node, conf.Bridge)
	if err != nil || br == nil {
		return err
	}
	keep, ok := conf.GCAttachments()
	if !ok {
		// Without the list every veth would look stale: collect nothing.
		return nil
	}
	valid := make(map[string]bool, len(keep))
	for _, a := range keep {
		valid[HostVethName(a.ContainerID, a.IfName)] = true
	}
	var errs []string
	if err := gcEndpoints(conf, valid); err != nil {
		errs = append(errs, err.Error())
	}
	links, err := node.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.MasterIndex != br.Attrs().Index ||
			!strings.HasPrefix(a.Name, HostVethPrefix) || valid[a.Name] {
			continue
		}
		if err := netlinkx.DelLinkByName(a.Name); err != nil && !netlinkx.IsNotFound(err) {
			errs = append(errs, fmt.Sprintf("delete stale veth %s: %v", a.Name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// Status reports whether ADD can be served: the bridge name must not be
// taken by another kind of link, the IPAM must be ready, and weftd must
// answer on its policy socket when the config names one (policyStatus).
func (p *Plugin) Status(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	node, err := netlinkx.NewHandle()
	if err != nil {
		return cniErr(types.ErrInternal, err, "node netlink")
	}
	defer node.Close()
	if _, err := lookupBridge(node, conf.Bridge); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, err.Error(), "")
	}
	if err := p.ipamFor(conf).Status(ctx, args); err != nil {
		return cniErr(types.ErrPluginNotAvailable, err, "ipam %s STATUS", conf.IPAM.Type)
	}
	return policyStatus(ctx, conf)
}
