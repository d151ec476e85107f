// Package ipam is weft-ipam: a host-local compatible IPAM with a crash-safe
// single-file store and weft's node-subnet mode. The weft-ipam binary is a
// thin wrapper over CmdAdd/CmdDel/CmdCheck/CmdGC/CmdStatus; the weft plugin
// calls the same functions in-process when ipam.type is "weft-ipam".
//
// # Configuration ("ipam" section of the network configuration)
//
// Everything host-local accepts that concerns allocation works unchanged:
//
//	"ranges":     [[{"subnet": "10.1.0.0/16", "rangeStart": "10.1.0.10",
//	                 "rangeEnd": "10.1.0.200", "gateway": "10.1.0.1"}], ...]
//	              One address is allocated per inner list (range set).
//	              rangeStart/rangeEnd/gateway default to the first host,
//	              the last host (before broadcast for IPv4) and the first
//	              host address. Host bits in subnet are ignored.
//	"subnet", "rangeStart", "rangeEnd", "gateway"
//	              host-local's legacy single range; it becomes the first set.
//	"routes":     [{"dst": "0.0.0.0/0", "gw": "10.1.0.1"}] copied to results.
//	"dataDir":    parent of the per-network directories; default
//	              /var/lib/cni/networks, so state lives in <dataDir>/<name>.
//	"resolvConf": a resolv.conf whose nameserver/domain/search/options
//	              become the result's DNS (else the network's "dns").
//
// Weft's extension:
//
//	"subnetFile": "/run/weft/subnet.json"   allocate from the node subnet
//	"nodeSubnet": true                        the same, at the default path
//
// The node subnet (see internal/subnetfile) becomes the first range set,
// with the whole subnet as range and its first host as gateway. Other range
// sets may follow (for example IPv6). When "routes" is absent in this mode
// the result carries a default route via the node gateway (for the node
// subnet's family only; extra ranges need explicit routes); "routes": []
// means no routes at all.
//
// Requested addresses: CNI_ARGS "IP=a[,b]", runtimeConfig "ips" and
// args.cni.ips, each matched to the range set that contains it. Unknown
// CNI_ARGS keys are always ignored.
//
// # Semantics
//
// One allocation per (container ID, ifname) and range set; a repeated ADD
// returns the existing addresses. The next free address after the set's
// last reserved one is handed out, wrapping around; network, broadcast and
// gateway addresses never are. DEL is idempotent and never needs the subnet
// file. CHECK fails (code 3) when the attachment holds no address or an
// address missing from prevResult. GC releases every allocation not listed in
// cni.dev/valid-attachments (or the older cni.dev/attachments; both absent
// means nothing is released). STATUS returns code 50 when the subnet file is
// missing or any range set is exhausted (per spec 50 = cannot serve ADD;
// 51 is left to the main plugin, which knows about connectivity).
//
// GC trusts the runtime's list: an attachment added after the runtime built
// the list and before GC runs is released, so runtimes must not run GC
// concurrently with ADDs on the same network (libcni's GCNetworkList does
// not add any ordering of its own).
//
// Error codes: 1 unsupported cniVersion; 4 bad CNI_ARGS IP, container ID or
// ifname; 5 store or subnet file I/O;
// 6 malformed JSON; 7 invalid configuration (overlapping or invalid ranges,
// bad routes), the message naming the field; 11 subnet file not written yet
// or range exhausted on ADD (both clear up on their own).
//
// # On-disk layout
//
// <dataDir>/<name>/ holds two state slots, weft-ipam.0 and weft-ipam.1,
// each a full copy of the network's allocations ("<ip> <container ID>
// <ifname>" lines, the last reserved address per set, a generation number
// and a CRC-32C trailer). Writers flock the directory itself (no lock file),
// read both slots and overwrite the older one in place; a writer killed
// midway leaves a slot that fails its checksum, so readers fall back to the
// previous generation and an allocation is either fully recorded or absent.
// Details and the reasoning (no temp+rename: 0.6-0.9 ms on ext4) are in
// package store/disk. Existing host-local files in the directory are
// imported on first use. State in a format this weft-ipam does not know
// (another format version, or an unknown record: a newer weft-ipam before a
// rollback) fails every verb with code 5 naming the file and the version,
// and is never ignored or moved aside. Allocations written under an earlier kernel boot
// ID are released on first use after a node reboot (no pod survives one).
package ipam

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/ipam/allocator"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
)

// CmdAdd allocates addresses for args.ContainerID/args.IfName from the
// network configuration in args.StdinData.
func CmdAdd(args *skel.CmdArgs) (*types100.Result, error) {
	return New(disk.Opener{}).Add(context.Background(), args)
}

// CmdDel releases the attachment's addresses. It is idempotent.
func CmdDel(args *skel.CmdArgs) error {
	return New(disk.Opener{}).Del(context.Background(), args)
}

// CmdCheck verifies the attachment's allocation against prevResult.
func CmdCheck(args *skel.CmdArgs) error {
	return New(disk.Opener{}).Check(context.Background(), args)
}

// CmdGC releases every allocation not in cni.dev/valid-attachments.
func CmdGC(args *skel.CmdArgs) error {
	return New(disk.Opener{}).GC(context.Background(), args)
}

// CmdStatus reports whether ADD can be served.
func CmdStatus(args *skel.CmdArgs) error {
	return New(disk.Opener{}).Status(context.Background(), args)
}

// Plugin implements the CNI verbs over a store.Opener.
type Plugin struct {
	stores store.Opener
}

// New returns a Plugin using stores.
func New(stores store.Opener) *Plugin {
	return &Plugin{stores: stores}
}

// asCNIError returns err as a *types.Error, treating foreign errors as
// store I/O failures.
func asCNIError(err error, what string) error {
	if err == nil {
		return nil
	}
	var te *types.Error
	if errors.As(err, &te) {
		return te
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return types.NewError(types.ErrTryAgainLater, what+": "+err.Error(), "")
	}
	return types.NewError(types.ErrIOFailure, what+": "+err.Error(), "")
}

// attachment validates the container ID and ifname as skel does, so that
// in-process callers get the same checks (the store format relies on them
// holding no whitespace).
func attachment(args *skel.CmdArgs) error {
	if args.ContainerID == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID: missing", "")
	}
	if err := utils.ValidateContainerID(args.ContainerID); err != nil {
		return types.NewError(types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID: "+err.Msg, err.Details)
	}
	if err := utils.ValidateInterfaceName(args.IfName); err != nil {
		return types.NewError(err.Code, "CNI_IFNAME: "+err.Msg, err.Details)
	}
	return nil
}

func (p *Plugin) open(c *config) (store.Store, error) {
	s, err := p.stores.Open(c.dataDir)
	if err != nil {
		return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("ipam.dataDir: open store %s: %v", c.dataDir, err), "")
	}
	return s, nil
}

// Add implements ADD.
func (p *Plugin) Add(ctx context.Context, args *skel.CmdArgs) (*types100.Result, error) {
	if err := attachment(args); err != nil {
		return nil, err
	}
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return nil, err
	}
	pl, err := c.resolve()
	if err != nil {
		return nil, err
	}
	requested, err := c.requestedIPs(args.Args)
	if err != nil {
		return nil, err
	}
	want := make([]netip.Addr, len(pl.sets))
	for _, a := range requested {
		i := pl.setOf(a)
		if i < 0 {
			return nil, invalid("requested IP %s is not inside any configured range", a)
		}
		if want[i].IsValid() {
			return nil, invalid("requested IPs %s and %s both fall into %s", want[i], a, pl.fields[i])
		}
		want[i] = a
	}
	st, err := p.open(c)
	if err != nil {
		return nil, err
	}
	got := make([]netip.Addr, len(pl.sets))
	err = st.Update(ctx, func(s *store.State) (bool, error) {
		clear(got)
		for _, a := range s.Find(args.ContainerID, args.IfName) {
			if i := pl.setOf(a.IP); i >= 0 && !got[i].IsValid() {
				if want[i].IsValid() && want[i] != a.IP {
					return false, types.NewError(types.ErrInternal, fmt.Sprintf(
						"container %s ifname %s already holds %s, cannot also take requested %s",
						args.ContainerID, args.IfName, a.IP, want[i]), "")
				}
				got[i] = a.IP
			}
		}
		changed := false
		inUse := s.InUse()
		for i, set := range pl.sets {
			if got[i].IsValid() {
				continue
			}
			ip, err := pl.pick(i, set, want[i], s.Last(i), inUse)
			if err != nil {
				return false, err
			}
			got[i] = ip
			s.Allocations = append(s.Allocations, store.Allocation{IP: ip, ContainerID: args.ContainerID, IfName: args.IfName})
			if !want[i].IsValid() {
				s.SetLast(i, ip)
			}
			changed = true
		}
		return changed, nil
	})
	if err != nil {
		return nil, asCNIError(err, "allocate")
	}
	return pl.result(got), nil
}

func (pl *pool) setOf(a netip.Addr) int {
	for i, s := range pl.sets {
		if s.Contains(a) {
			return i
		}
	}
	return -1
}

func (pl *pool) pick(i int, set allocator.RangeSet, want, last netip.Addr, inUse func(netip.Addr) bool) (netip.Addr, error) {
	if want.IsValid() {
		err := set.CheckRequested(want, inUse)
		switch {
		case err == nil:
			return want, nil
		case errors.Is(err, allocator.ErrReservedAddr):
			return netip.Addr{}, invalid("requested IP in %s: %v", pl.fields[i], err)
		default:
			return netip.Addr{}, types.NewError(types.ErrInternal, fmt.Sprintf("requested IP in %s: %v", pl.fields[i], err), "")
		}
	}
	ip, err := set.Next(last, inUse)
	if errors.Is(err, allocator.ErrExhausted) {
		return netip.Addr{}, types.NewError(types.ErrTryAgainLater, fmt.Sprintf("%s: no free address left in %s", pl.fields[i], setString(set)), "")
	}
	return ip, err
}

func setString(set allocator.RangeSet) string {
	s := ""
	for i, r := range set {
		if i > 0 {
			s += ", "
		}
		s += r.String()
	}
	return s
}

func (pl *pool) result(ips []netip.Addr) *types100.Result {
	res := &types100.Result{CNIVersion: types100.ImplementedSpecVersion, DNS: pl.dns}
	for i, ip := range ips {
		r, _ := pl.sets[i].Range(ip)
		res.IPs = append(res.IPs, &types100.IPConfig{
			Address: net.IPNet{IP: ip.AsSlice(), Mask: net.CIDRMask(r.Subnet.Bits(), ip.BitLen())},
			Gateway: r.Gateway.AsSlice(),
		})
	}
	for _, rt := range pl.routes {
		res.Routes = append(res.Routes, rt.Copy())
	}
	return res
}

// Del implements DEL: releases the attachment's addresses, if any.
func (p *Plugin) Del(ctx context.Context, args *skel.CmdArgs) error {
	if err := attachment(args); err != nil {
		return err
	}
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	st, err := p.open(c)
	if err != nil {
		return err
	}
	err = st.Update(ctx, func(s *store.State) (bool, error) {
		n := s.Release(func(a store.Allocation) bool {
			return a.ContainerID == args.ContainerID && a.IfName == args.IfName
		})
		return n > 0, nil
	})
	return asCNIError(err, "release")
}

// Check implements CHECK.
func (p *Plugin) Check(ctx context.Context, args *skel.CmdArgs) error {
	if err := attachment(args); err != nil {
		return err
	}
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	var prev []netip.Addr
	if len(c.raw.PrevResult) > 0 && string(c.raw.PrevResult) != "null" {
		r, err := version.NewResult(c.raw.CNIVersion, c.raw.PrevResult)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
		}
		res, err := types100.NewResultFromResult(r)
		if err != nil {
			return types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
		}
		for _, ipc := range res.IPs {
			if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
				prev = append(prev, a.Unmap())
			}
		}
	}
	st, err := p.open(c)
	if err != nil {
		return err
	}
	err = st.View(ctx, func(s *store.State) error {
		allocs := s.Find(args.ContainerID, args.IfName)
		if len(allocs) == 0 {
			return types.NewError(types.ErrUnknownContainer, fmt.Sprintf(
				"no address allocated to container %s ifname %s in network %s", args.ContainerID, args.IfName, c.raw.Name), "")
		}
		if prev == nil {
			return nil
		}
		for _, a := range allocs {
			found := false
			for _, ip := range prev {
				found = found || ip == a.IP
			}
			if !found {
				return types.NewError(types.ErrUnknownContainer, fmt.Sprintf(
					"address %s allocated to container %s ifname %s is missing from prevResult", a.IP, args.ContainerID, args.IfName), "")
			}
		}
		return nil
	})
	return asCNIError(err, "check")
}

// GC implements GC.
func (p *Plugin) GC(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	valid, present, err := c.validAttachments()
	if err != nil || !present {
		return err
	}
	st, err := p.open(c)
	if err != nil {
		return err
	}
	err = st.Update(ctx, func(s *store.State) (bool, error) {
		n := s.Release(func(a store.Allocation) bool {
			_, ok := valid[types.GCAttachment{ContainerID: a.ContainerID, IfName: a.IfName}]
			return !ok
		})
		return n > 0, nil
	})
	return asCNIError(err, "gc")
}

// Status implements STATUS.
func (p *Plugin) Status(ctx context.Context, args *skel.CmdArgs) error {
	c, err := parseConfig(args.StdinData)
	if err != nil {
		return err
	}
	pl, err := c.resolve()
	if err != nil {
		var te *types.Error
		if errors.As(err, &te) && te.Code == types.ErrTryAgainLater {
			return types.NewError(types.ErrPluginNotAvailable, te.Msg, te.Details)
		}
		return err
	}
	st, err := p.open(c)
	if err != nil {
		return err
	}
	err = st.View(ctx, func(s *store.State) error {
		inUse := s.InUse()
		for i, set := range pl.sets {
			if _, err := set.Next(netip.Addr{}, inUse); errors.Is(err, allocator.ErrExhausted) {
				return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("%s: no free address left in %s", pl.fields[i], setString(set)), "")
			}
		}
		return nil
	})
	return asCNIError(err, "status")
}
