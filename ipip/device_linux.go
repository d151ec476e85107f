package ipip

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/tun"
)

// DeviceOptions say which TUN to open for the userspace tunnel.
type DeviceOptions struct {
	// Name defaults to DefaultDevice.
	Name string
	// MTU of the device: DeviceMTU(underlay MTU).
	MTU int
	// NetNS is the path of the node's network namespace, "" for the
	// caller's own.
	NetNS string
	// PodCIDR is this node's: its first address goes on the device as a
	// /32, so the ICMP errors the node sends to remote pods (fragmentation
	// needed, unreachable) carry a pod-network source that passes the
	// peers' inner-source check.
	PodCIDR netip.Prefix
	Log     *slog.Logger
}

// OpenDevice opens (or adopts, after a restart) the TUN device, sets its
// MTU, brings it up and puts the pod CIDR address on it.
func OpenDevice(o DeviceOptions) (*tun.Native, error) {
	if o.Name == "" {
		o.Name = DefaultDevice
	}
	if !o.PodCIDR.Addr().Is4() {
		return nil, fmt.Errorf("ipip device: pod CIDR %v is not IPv4", o.PodCIDR)
	}
	dev, err := tun.Open(tun.Options{Name: o.Name, MTU: o.MTU, NetNS: o.NetNS, Log: o.Log})
	if err != nil {
		return nil, fmt.Errorf("ipip device: %w", err)
	}
	if err := addAddr(o); err != nil {
		_ = dev.Close()
		return nil, err
	}
	return dev, nil
}

func addAddr(o DeviceOptions) error {
	h, err := netlinkx.OpenAt(o.NetNS, unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("ipip device: netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(o.Name)
	if err != nil {
		return fmt.Errorf("ipip device %s: %w", o.Name, err)
	}
	a := o.PodCIDR.Addr()
	ipn := &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(32, 32)}
	if err := h.AddrReplace(l, &netlink.Addr{IPNet: ipn}); err != nil {
		return fmt.Errorf("ipip device %s: address %s/32: %w", o.Name, a, err)
	}
	return nil
}

// RemoveDevice deletes the device name ("" = DefaultDevice) in the
// namespace at netnsPath ("" = the caller's); one that is not there is
// success. The routes through it go with it.
func RemoveDevice(name, netnsPath string) error {
	if name == "" {
		name = DefaultDevice
	}
	return tun.Remove(name, netnsPath)
}
