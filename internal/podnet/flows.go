package podnet

import (
	"errors"
	"fmt"
	"net/netip"

	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/conntrack"
	"github.com/weftnet/weft/internal/endpoint"
)

// forgetFlows deletes the node's conntrack entries of the attachment's
// addresses (either direction, source or destination), so that a client
// of the old pod cannot reach a new pod that gets the address past its
// ingress policy on an entry conntrack already calls ESTABLISHED. DEL runs
// it after the veth is gone (no packet of the pod can create entries any
// more) and before the address is released; a DEL that fails here keeps
// the address, and the runtime's retry runs it again.
//
// The addresses come from the endpoint record and from prevResult; with
// neither (not weftd's conflist, and a runtime that sends no prevResult)
// there is nothing to go by and nothing is deleted.
func forgetFlows(conf *NetConf, hostName string) (int, error) {
	addrs, err := attachmentAddrs(conf, hostName)
	if err != nil || len(addrs) == 0 {
		return 0, err
	}
	t, err := conntrack.Open()
	if err != nil {
		if noConntrack(err) {
			return 0, nil
		}
		return 0, err
	}
	defer t.Close()
	n, err := conntrack.DeleteAddrs(t, addrs)
	if err != nil && noConntrack(err) {
		return n, nil
	}
	return n, err
}

// noConntrack reports an error that means the kernel tracks no
// connections here (no nf_conntrack netlink): then there is nothing to
// delete, and DEL must not fail for it.
func noConntrack(err error) bool {
	return errors.Is(err, unix.EPROTONOSUPPORT) || errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOENT)
}

// attachmentAddrs returns the attachment's addresses as its endpoint
// record and prevResult know them (deduplicated).
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
	if conf.EndpointDir != "" {
		ep, ok, err := endpoint.Read(conf.EndpointDir, hostName)
		if err != nil {
			return nil, fmt.Errorf("endpoint record: %w", err)
		}
		if ok {
			as, err := ep.Addrs()
			if err != nil {
				return nil, err
			}
			addAll(as)
		}
	}
	if conf.PrevResult != nil {
		prev, err := current.NewResultFromResult(conf.PrevResult)
		if err != nil {
			return nil, fmt.Errorf("prevResult: %w", err)
		}
		for _, ip := range prev.IPs {
			if a, ok := netip.AddrFromSlice(ip.Address.IP); ok {
				addAll([]netip.Addr{a})
			}
		}
	}
	return out, nil
}
