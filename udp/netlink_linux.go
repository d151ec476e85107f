package udp

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/tun"
)

// Netlink is the node's Kernel: internal/tun devices, netlink addresses,
// Socket binds, all in the caller's network namespace.
type Netlink struct {
	Log *slog.Logger
}

var _ Kernel = Netlink{}

// OpenDevice implements Kernel.
func (n Netlink) OpenDevice(name string, mtu int) (tun.Device, error) {
	return tun.Open(tun.Options{Name: name, MTU: mtu, Log: n.Log})
}

// withLink runs fn with a netlink handle and the link name.
func withLink[T any](name string, fn func(h *netlinkx.Handle, l netlink.Link) (T, error)) (T, error) {
	var zero T
	h, err := netlinkx.NewHandle()
	if err != nil {
		return zero, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return zero, fmt.Errorf("look up %s: %w", name, err)
	}
	return fn(h, l)
}

// SetAddr implements Kernel.
func (Netlink) SetAddr(name string, p netip.Prefix) (int, error) {
	return withLink(name, func(h *netlinkx.Handle, l netlink.Link) (int, error) {
		addrs, err := h.AddrList(l, unix.AF_INET)
		if err != nil {
			return 0, fmt.Errorf("addresses of %s: %w", name, err)
		}
		have := false
		for _, a := range addrs {
			ap, ok := netip.AddrFromSlice(a.IP.To4())
			ones, _ := a.Mask.Size()
			if ok && netip.PrefixFrom(ap, ones) == p {
				have = true
				continue
			}
			if err := h.Raw().AddrDel(l, &a); err != nil {
				return 0, fmt.Errorf("delete %s from %s: %w", a.IPNet, name, err)
			}
		}
		if !have {
			a := &netlink.Addr{IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}}
			if err := h.Raw().AddrAdd(l, a); err != nil {
				return 0, fmt.Errorf("add %s to %s: %w", p, name, err)
			}
		}
		return l.Attrs().Index, nil
	})
}

// DeviceIndex implements Kernel.
func (Netlink) DeviceIndex(name string) (int, error) {
	i, err := withLink(name, func(_ *netlinkx.Handle, l netlink.Link) (int, error) { return l.Attrs().Index, nil })
	if netlinkx.IsNotFound(err) {
		return 0, nil
	}
	return i, err
}

// RemoveDevice implements Kernel.
func (Netlink) RemoveDevice(name string) error { return tun.Remove(name, "") }

// LinkMTU implements Kernel.
func (Netlink) LinkMTU(name string) (int, error) {
	return withLink(name, func(_ *netlinkx.Handle, l netlink.Link) (int, error) { return l.Attrs().MTU, nil })
}

// NewBind implements Kernel.
func (Netlink) NewBind() conn.Bind { return NewSocket() }
