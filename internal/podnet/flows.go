package podnet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/conntrack"
	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/netlinkx"
)

// removeVeth deletes the host veth (which removes the pod end too) and the
// node's conntrack entries of the attachment's addresses (either direction,
// source or destination, DNAT included), so that a client of the old pod
// cannot reach a new pod that gets the address past its ingress policy on
// an entry conntrack already calls ESTABLISHED. DEL runs it before the
// address is released; a DEL that fails here keeps the address, and the
// runtime's retry runs it again.
//
// The link goes down first (one round trip, ~0.2 ms): from then on no
// packet of the pod passes, so no entry can see a reply from it (an entry a
// client creates later stays unreplied: NEW to policy). Then the kernel's
// veth teardown (~15-20 ms, mostly RCU grace periods) and the conntrack pass
// (~4 ms: a walk of the whole hash table, however few entries it holds) run
// side by side instead of one after the other.
//
// The addresses come from the endpoint record and from prevResult; with
// neither (not weftd's conflist, and a runtime that sends no prevResult)
// only the veth is deleted.
func (p *Plugin) removeVeth(conf *NetConf, hostName string) error {
	addrs, err := attachmentAddrs(conf, hostName)
	if err != nil { // a DEL that always fails would leak the pod: go on
		p.log.Warn("conntrack entries of the attachment are not deleted", "veth", hostName, "err", err)
	}
	var ct *conntrack.Kernel
	if len(addrs) > 0 {
		if err := netlinkx.SetDownByName(hostName); err != nil && !netlinkx.IsNotFound(err) {
			return cniErr(types.ErrInternal, err, "set %s down", hostName)
		}
		ct, err = conntrack.Open() // bound to this (the node's) netns
		if err != nil && !noConntrack(err) {
			return cniErr(types.ErrInternal, err, "conntrack")
		}
	}
	flows := make(chan error, 1)
	go func() {
		if ct == nil {
			flows <- nil
			return
		}
		defer ct.Close()
		_, err := conntrack.DeleteAddrs(ct, addrs)
		if err != nil && noConntrack(err) {
			err = nil
		}
		flows <- err
	}()
	lerr := netlinkx.DelLinkByName(hostName)
	ferr := <-flows
	if lerr != nil && !netlinkx.IsNotFound(lerr) {
		return cniErr(types.ErrInternal, lerr, "delete veth %s", hostName)
	}
	if ferr != nil {
		return cniErr(types.ErrInternal, ferr, "conntrack entries of %s", hostName)
	}
	return nil
}

// noConntrack reports an error that means the kernel tracks no
// connections here (no nf_conntrack netlink): then there is nothing to
// delete, and DEL must not fail for it.
func noConntrack(err error) bool {
	return errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT)
}

// attachmentAddrs returns the attachment's addresses as its endpoint
// record and prevResult know them (deduplicated). An unreadable source is
// reported, and the other's addresses are still returned.
func attachmentAddrs(conf *NetConf, hostName string) ([]netip.Addr, error) {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	addAll := func(as []netip.Addr) {
		for _, a := range as {
			if a = a.Unmap(); a.IsValid() && !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	var errs []error
	if conf.EndpointDir != "" {
		ep, ok, err := endpoint.Read(conf.EndpointDir, hostName)
		var as []netip.Addr
		if err == nil && ok {
			as, err = ep.Addrs()
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("endpoint record: %w", err))
		}
		addAll(as)
	}
	if conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			errs = append(errs, fmt.Errorf("prevResult: %w", err))
		} else {
			for _, ip := range prev.IPs {
				if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
					addAll([]netip.Addr{a})
				}
			}
		}
	}
	return out, errors.Join(errs...)
}
