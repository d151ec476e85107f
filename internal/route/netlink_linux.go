package route

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Netlink is the real Kernel over one network namespace's netlink socket
// (internal/netlinkx: interrupted dumps and EINTR are retried).
type Netlink struct {
	h *netlinkx.Handle
}

// NewNetlink returns a Kernel over h.
func NewNetlink(h *netlinkx.Handle) *Netlink { return &Netlink{h: h} }

// List implements Kernel.
func (n *Netlink) List() ([]KernelRoute, error) {
	links, err := n.h.LinkList()
	if err != nil {
		return nil, fmt.Errorf("list links: %w", err)
	}
	names := map[int]string{}
	for _, l := range links {
		names[l.Attrs().Index] = l.Attrs().Name
	}
	var out []KernelRoute
	for _, fam := range []int{unix.AF_INET, unix.AF_INET6} {
		rs, err := n.h.RouteListFiltered(fam, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range rs {
			if kr, ok := fromNetlink(r, names); ok {
				out = append(out, kr)
			}
		}
	}
	return out, nil
}

func fromNetlink(r netlink.Route, names map[int]string) (KernelRoute, bool) {
	if r.Dst == nil || r.Type != unix.RTN_UNICAST || len(r.MultiPath) > 0 {
		return KernelRoute{}, false
	}
	ip, _ := netip.AddrFromSlice(r.Dst.IP)
	ones, _ := r.Dst.Mask.Size()
	gw, _ := netip.AddrFromSlice(r.Gw)
	src, _ := netip.AddrFromSlice(r.Src)
	return KernelRoute{
		Route: Route{
			Dst: netip.PrefixFrom(ip.Unmap(), ones), Dev: names[r.LinkIndex], Gw: gw.Unmap(),
			OnLink: r.Flags&int(netlink.FLAG_ONLINK) != 0, Src: src.Unmap(), MTU: r.MTU,
		},
		Protocol: int(r.Protocol), Priority: r.Priority,
	}, true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func ipOrNil(a netip.Addr) net.IP {
	if !a.IsValid() {
		return nil
	}
	return net.IP(a.AsSlice())
}

func (n *Netlink) toNetlink(r Route, proto int, prio int) (*netlink.Route, error) {
	l, err := n.h.LinkByName(r.Dev)
	if err != nil {
		return nil, fmt.Errorf("device %s: %w", r.Dev, err)
	}
	nr := &netlink.Route{
		LinkIndex: l.Attrs().Index, Dst: ipNet(r.Dst), Gw: ipOrNil(r.Gw), Src: ipOrNil(r.Src), MTU: r.MTU,
		Table: unix.RT_TABLE_MAIN, Scope: netlink.SCOPE_LINK, Protocol: netlink.RouteProtocol(proto),
		Type: unix.RTN_UNICAST, Priority: prio,
	}
	if r.Gw.IsValid() {
		nr.Scope = netlink.SCOPE_UNIVERSE
	}
	if r.OnLink {
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr, nil
}

// Replace implements Kernel.
func (n *Netlink) Replace(r Route, _ string) error {
	nr, err := n.toNetlink(r, Protocol, 0)
	if err != nil {
		return err
	}
	return netlinkx.Do(func() error { return n.h.Raw().RouteReplace(nr) })
}

// Delete implements Kernel.
func (n *Netlink) Delete(kr KernelRoute) error {
	nr, err := n.toNetlink(kr.Route, kr.Protocol, kr.Priority)
	if netlinkx.IsNotFound(err) {
		return nil // the device went, and its routes with it
	}
	if err != nil {
		return err
	}
	err = netlinkx.Do(func() error { return n.h.Raw().RouteDel(nr) })
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	return err
}
