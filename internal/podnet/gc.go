package podnet

import (
	"context"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/netlinkx"
)

// GC collects what belongs to this network (conf.Name) and to none of the
// attachments in cni.dev/valid-attachments (null or [] both mean none is
// left; an absent key means collect nothing), in DEL's order: host veths
// first, then the IPAM allocations (only once no stale veth is left, so an
// address is never released while still configured), then the endpoint
// records. A veth is this network's when its device group is
// NetworkGroup(conf.Name); a record, when its network field says so. Veths
// from before weft set groups (group 0) are never collected: on a bridge two
// networks may share, GC cannot tell whose they are. Such a record is
// removed once its veth is gone.
func (p *Plugin) GC(ctx context.Context, args *skel.CmdArgs) error {
	conf, err := LoadConf(args.StdinData)
	if err != nil {
		return err
	}
	keep, listed := conf.GCAttachments()
	if !listed {
		return nil
	}
	valid := make(map[string]bool, len(keep))
	for _, a := range keep {
		valid[HostVethName(a.ContainerID, a.IfName)] = true
	}
	node, err := netlinkx.NewHandle()
	if err != nil {
		return cniErr(types.ErrInternal, err, "node netlink")
	}
	defer node.Close()
	var errs []string
	if err := p.gcVeths(node, conf, valid); err != nil {
		errs = append(errs, err.Error(), "addresses not released until the stale veths are gone")
	} else if err := p.ipamFor(conf).GC(ctx, args); err != nil {
		errs = append(errs, fmt.Sprintf("ipam %s GC: %v", conf.IPAM.Type, err))
	}
	if err := gcEndpoints(node, conf, valid); err != nil {
		errs = append(errs, err.Error())
	}
	if len(errs) > 0 {
		return types.NewError(types.ErrInternal, strings.Join(errs, "; "), "")
	}
	return nil
}

// gcVeths deletes this network's stale host veths on conf's bridge, with
// their addresses' conntrack entries, as DEL does (removeVeth).
func (p *Plugin) gcVeths(node *netlinkx.Handle, conf *NetConf, valid map[string]bool) error {
	br, err := lookupBridge(node, conf.Bridge)
	if err != nil || br == nil {
		return err
	}
	links, err := node.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	group := NetworkGroup(conf.Name)
	var errs []string
	for _, l := range links {
		a := l.Attrs()
		if l.Type() != "veth" || a.MasterIndex != br.Attrs().Index || a.Group != group ||
			!strings.HasPrefix(a.Name, HostVethPrefix) || valid[a.Name] {
			continue
		}
		if err := p.removeVeth(conf, a.Name); err != nil {
			errs = append(errs, fmt.Sprintf("delete stale veth %s: %v", a.Name, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("%s", strings.Join(errs, "; "))
	}
	return nil
}

// gcEndpoints removes the records of this network's attachments not in
// valid, and records without a network (written before weft recorded it)
// whose host veth no longer exists.
func gcEndpoints(node *netlinkx.Handle, conf *NetConf, valid map[string]bool) error {
	if conf.EndpointDir == "" {
		return nil
	}
	eps, err := endpoint.List(conf.EndpointDir)
	var errs []string
	if err != nil {
		errs = append(errs, err.Error())
	}
	for _, ep := range eps {
		if valid[ep.HostVeth] || (ep.Network != conf.Name && (ep.Network != "" || linkExists(node, ep.HostVeth))) {
			continue
		}
		if err := endpoint.Remove(conf.EndpointDir, ep.HostVeth); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("endpoint records: %s", strings.Join(errs, "; "))
	}
	return nil
}

// linkExists reports whether a link called name exists (an unclear answer
// counts as existing: keep the record).
func linkExists(node *netlinkx.Handle, name string) bool {
	_, err := node.LinkByName(name)
	return !netlinkx.IsNotFound(err)
}
