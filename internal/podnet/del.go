package podnet

import (
	"context"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Del removes the attachment. It is idempotent: a missing netns, a missing
// link or a container never added all succeed. The host veth is found by
// its deterministic name, so the pod's netns is never needed; deleting it
// removes the pod end too. The veth goes before the address is released,
// so the address is never handed out while still configured, and so do
// the address's conntrack entries (see removeVeth).
func (p *Plugin) Del(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	if args.IfName == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_IFNAME: missing", "")
	}
	hostName := HostVethName(args.ContainerID, args.IfName)
	if err := p.removeVeth(conf, hostName); err != nil {
		return err
	}
	if err := p.ipamFor(conf).Del(ctx, args); err != nil {
		return cniErr(types.ErrInternal, err, "ipam %s DEL", conf.IPAM.Type)
	}
	if err := forgetEndpoint(conf, hostName); err != nil {
		return cniErr(types.ErrIOFailure, err, "endpointDir")
	}
	releaseShaping(ctx, conf, hostName)
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
