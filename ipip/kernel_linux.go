package ipip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// KernelOptions say how to make the kernel's IP-in-IP link, used where the
// kernel has the ipip module (Detect says Kernel).
type KernelOptions struct {
	// Name defaults to DefaultDevice.
	Name string
	// LocalIP is the node's underlay address: the link takes IP-in-IP sent
	// to it from any node (remote any, an NBMA link); the outer
	// destination of what it sends is the route's gateway, so every route
	// into it names the peer's underlay address, onlink.
	LocalIP netip.Addr
	// MTU of the link: the underlay's less 20.
	MTU int
	// PodCIDR is this node's: its first address goes on the link as a /32
	// (the source of the ICMP errors the node sends to remote pods, as on
	// the userspace device).
	PodCIDR netip.Prefix
}

// Links is the netlink a kernel link is made with: *netlink.Handle, or a
// fake in tests (this machine has no ipip module).
type Links interface {
	LinkByName(name string) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetMTU(link netlink.Link, mtu int) error
	LinkSetUp(link netlink.Link) error
	AddrReplace(link netlink.Link, addr *netlink.Addr) error
	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrDel(link netlink.Link, addr *netlink.Addr) error
}

// KernelLink is the link EnsureKernelLink creates: ipip carrying IPv4
// only (protocol 4: a link of protocol "any" also decapsulates MPLS-in-IP,
// which the encapsulation guard's IP-in-IP rules never see), local the
// underlay address, remote any, TTL inherited from the inner packet, no
// TOS, no outer encapsulation (FOU/GUE), path MTU discovery on (the outer
// DF bit is always set; the pods' MTU keeps every inner packet within the
// link's).
func KernelLink(o KernelOptions) *netlink.Iptun {
	name := o.Name
	if name == "" {
		name = DefaultDevice
	}
	return &netlink.Iptun{
		LinkAttrs: netlink.LinkAttrs{Name: name, MTU: o.MTU},
		Local:     o.LocalIP.AsSlice(),
		PMtuDisc:  1,
		Proto:     unix.IPPROTO_IPIP,
	}
}

// EnsureKernelLink creates the kernel ipip link, or adopts the one a
// previous weftd left (so a restart never interrupts forwarding: the
// kernel carries the traffic while no weftd runs). A link of that name
// that is something else (a userspace TUN from before the module was
// loaded) or any other ipip link than KernelLink's is replaced. Then it
// sets the MTU and the pod-CIDR /32 (and removes any other IPv4 address:
// one left from an earlier pod CIDR could lie in another node's). A link
// it creates stays down: it decapsulates from anyone until the
// encapsulation guard is in place, so the caller brings it up
// (KernelLinkUp) only after the guard; an adopted link keeps its state
// (up, with the guard the previous weftd left). It reports whether it
// created the link. An error names the step; a link it created is deleted
// again when a later step fails.
func EnsureKernelLink(h Links, o KernelOptions) (created bool, err error) {
	if !o.LocalIP.Is4() || !o.PodCIDR.Addr().Is4() || o.MTU < 576 {
		return false, fmt.Errorf("ipip kernel link: needs an IPv4 local address, an IPv4 pod CIDR and an MTU of at least 576 (got %v, %v, %d)", o.LocalIP, o.PodCIDR, o.MTU)
	}
	want := KernelLink(o)
	name := want.Name
	l, err := h.LinkByName(name)
	switch {
	case err == nil && adoptable(l, want):
	case err == nil:
		if err := h.LinkDel(l); err != nil {
			return false, fmt.Errorf("ipip kernel link: replacing %s (%s): %w", name, describe(l), err)
		}
		l = nil
	case !netlinkx.IsNotFound(err):
		return false, fmt.Errorf("ipip kernel link %s: %w", name, err)
	default:
		l = nil
	}
	if l == nil {
		if err := h.LinkAdd(want); err != nil {
			if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENODEV) {
				err = fmt.Errorf("%w (the kernel has no ipip link type: is the ipip module missing?)", err)
			}
			return false, fmt.Errorf("ipip kernel link: creating %s (ipip local %s remote any): %w", name, o.LocalIP, err)
		}
		created = true
		if l, err = h.LinkByName(name); err != nil {
			return true, fmt.Errorf("ipip kernel link %s: created but not found: %w", name, err)
		}
	}
	undo := func(err error) (bool, error) {
		if created {
			if derr := h.LinkDel(l); derr != nil {
				err = errors.Join(err, fmt.Errorf("ipip kernel link: removing %s again: %w", name, derr))
			}
		}
		return created, err
	}
	if l.Attrs().MTU != o.MTU {
		if err := h.LinkSetMTU(l, o.MTU); err != nil {
			return undo(fmt.Errorf("ipip kernel link %s: mtu %d: %w", name, o.MTU, err))
		}
	}
	a := o.PodCIDR.Masked().Addr()
	self := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := h.AddrReplace(l, &netlink.Addr{IPNet: self}); err != nil {
		return undo(fmt.Errorf("ipip kernel link %s: address %s/32: %w", name, a, err))
	}
	have, err := h.AddrList(l, unix.AF_INET)
	if err != nil {
		return undo(fmt.Errorf("ipip kernel link %s: addresses: %w", name, err))
	}
	for _, old := range have {
		if old.IPNet == nil || old.IPNet.String() == self.String() {
			continue
		}
		if err := h.AddrDel(l, &old); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return undo(fmt.Errorf("ipip kernel link %s: removing stale address %s: %w", name, old.IPNet, err))
		}
	}
	return created, nil
}

// KernelLinkUp brings the kernel link up (once the encapsulation guard is
// in place); a link already up is left as it is.
func KernelLinkUp(h Links, name string) error {
	if name == "" {
		name = DefaultDevice
	}
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("ipip kernel link %s: %w", name, err)
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		return nil
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("ipip kernel link %s: up: %w", name, err)
	}
	return nil
}

// adoptable: l is the ipip link want describes: same local address,
// remote any, path MTU discovery, protocol, TTL, TOS, no outer
// encapsulation and not flow-based (collect metadata). (The kernel does
// not report the link a tunnel is pinned to back to this netlink library,
// so that one cannot be compared.)
func adoptable(l netlink.Link, want *netlink.Iptun) bool {
	t, ok := l.(*netlink.Iptun)
	if !ok {
		return false
	}
	local, _ := netip.AddrFromSlice(t.Local.To4())
	wlocal, _ := netip.AddrFromSlice(want.Local.To4())
	remote, _ := netip.AddrFromSlice(t.Remote.To4())
	return local == wlocal && (!remote.IsValid() || remote.IsUnspecified()) &&
		t.PMtuDisc == want.PMtuDisc && t.Proto == want.Proto && t.Ttl == want.Ttl && t.Tos == want.Tos &&
		t.EncapType == want.EncapType && !t.FlowBased
}

func describe(l netlink.Link) string {
	if t, ok := l.(*netlink.Iptun); ok {
		return fmt.Sprintf("ipip local %v remote %v", t.Local, t.Remote)
	}
	return l.Type()
}

// OpenKernelLinkUp is KernelLinkUp in the namespace at netnsPath ("" =
// the caller's).
func OpenKernelLinkUp(netnsPath, name string) error {
	h, err := netlinkx.OpenAt(netnsPath, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("ipip kernel link: netlink: %w", err)
	}
	defer h.Close()
	return KernelLinkUp(h, name)
}

// OpenKernelLink is EnsureKernelLink in the namespace at netnsPath ("" =
// the caller's).
func OpenKernelLink(netnsPath string, o KernelOptions) (bool, error) {
	h, err := netlinkx.OpenAt(netnsPath, unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("ipip kernel link: netlink: %w", err)
	}
	defer h.Close()
	return EnsureKernelLink(h, o)
}
