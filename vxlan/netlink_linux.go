package vxlan

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Netlink is the real Kernel over a netlink handle bound to one network
// namespace, so no OS thread has to switch namespaces. Requests go through
// internal/netlinkx (interrupted dumps and EINTR are retried).
type Netlink struct {
	h *netlinkx.Handle
}

// NewNetlink returns a Kernel working in the current network namespace.
func NewNetlink() (*Netlink, error) {
	h, err := netlinkx.NewHandle()
	if err != nil {
		return nil, err
	}
	return &Netlink{h: h}, nil
}

// NewNetlinkAt returns a Kernel working in the network namespace at path
// (e.g. /var/run/netns/NAME or /proc/PID/ns/net).
func NewNetlinkAt(path string) (*Netlink, error) {
	h, err := netlinkx.NewHandleAt(path)
	if err != nil {
		return nil, err
	}
	return &Netlink{h: h}, nil
}

// Handle returns the netlink handle (for a route.Netlink in the same
// namespace).
func (n *Netlink) Handle() *netlinkx.Handle { return n.h }

// Close releases the handle.
func (n *Netlink) Close() { n.h.Close() }

func (n *Netlink) EnsureDevice(spec DeviceSpec) (Device, error) {
	under, err := n.h.LinkByName(spec.UnderlayLink)
	if err != nil {
		return Device{}, fmt.Errorf("underlay link %q: %w", spec.UnderlayLink, err)
	}
	adopted := false
	l, err := n.h.LinkByName(spec.Name)
	switch {
	case err == nil:
		if vx, ok := l.(*netlink.Vxlan); ok && matches(vx, spec, under.Attrs().Index) {
			adopted = true
			break
		}
		// Same name, other parameters (VNI, port, local IP changed) or
		// another kind of link: replace it.
		if err := netlinkx.Do(func() error { return n.h.Raw().LinkDel(l) }); err != nil {
			return Device{}, fmt.Errorf("delete mismatching %s: %w", spec.Name, err)
		}
		l = nil
	case !netlinkx.IsNotFound(err):
		return Device{}, fmt.Errorf("link %s: %w", spec.Name, err)
	}
	if !adopted {
		vx := &netlink.Vxlan{
			LinkAttrs:    netlink.LinkAttrs{Name: spec.Name, MTU: spec.MTU},
			VxlanId:      spec.VNI,
			VtepDevIndex: under.Attrs().Index,
			SrcAddr:      net.IP(spec.LocalIP.AsSlice()),
			Port:         spec.Port,
			Learning:     false,
		}
		if err := netlinkx.Do(func() error { return n.h.Raw().LinkAdd(vx) }); err != nil {
			return Device{}, fmt.Errorf("create %s: %w", spec.Name, err)
		}
		if l, err = n.h.LinkByName(spec.Name); err != nil {
			return Device{}, fmt.Errorf("link %s after create: %w", spec.Name, err)
		}
	}
	if spec.MTU > 0 && l.Attrs().MTU != spec.MTU {
		if err := netlinkx.Do(func() error { return n.h.Raw().LinkSetMTU(l, spec.MTU) }); err != nil {
			return Device{}, fmt.Errorf("set mtu of %s: %w", spec.Name, err)
		}
	}
	if l, err = n.h.LinkByName(spec.Name); err != nil {
		return Device{}, fmt.Errorf("link %s: %w", spec.Name, err)
	}
	return Device{Name: spec.Name, Index: l.Attrs().Index, MAC: l.Attrs().HardwareAddr.String(), MTU: l.Attrs().MTU, Adopted: adopted,
		Up: l.Attrs().Flags&net.FlagUp != 0}, nil
}

func (n *Netlink) SetUp(dev Device) (bool, error) {
	l, err := n.h.LinkByName(dev.Name)
	if err != nil {
		return false, fmt.Errorf("link %s: %w", dev.Name, err)
	}
	if l.Attrs().Flags&net.FlagUp != 0 {
		return false, nil
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().LinkSetUp(l) }); err != nil {
		return false, fmt.Errorf("set %s up: %w", dev.Name, err)
	}
	return true, nil
}

func matches(vx *netlink.Vxlan, spec DeviceSpec, underIdx int) bool {
	local, _ := netip.AddrFromSlice(vx.SrcAddr)
	return vx.VxlanId == spec.VNI && vx.Port == spec.Port && local.Unmap() == spec.LocalIP &&
		!vx.Learning && (vx.VtepDevIndex == 0 || vx.VtepDevIndex == underIdx)
}

func (n *Netlink) DeleteDevice(name string) error {
	l, err := n.h.LinkByName(name)
	if err != nil {
		if netlinkx.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("link %s: %w", name, err)
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().LinkDel(l) }); err != nil {
		return fmt.Errorf("delete %s: %w", name, err)
	}
	return nil
}

func (n *Netlink) LinkMTU(name string) (int, error) {
	l, err := n.h.LinkByName(name)
	if err != nil {
		return 0, fmt.Errorf("link %s: %w", name, err)
	}
	return l.Attrs().MTU, nil
}

func (n *Netlink) link(dev Device) (netlink.Link, error) {
	l, err := n.h.LinkByIndex(dev.Index)
	if err != nil {
		return nil, fmt.Errorf("link %s (index %d): %w", dev.Name, dev.Index, err)
	}
	return l, nil
}

func (n *Netlink) Addrs(dev Device) ([]netip.Prefix, error) {
	l, err := n.link(dev)
	if err != nil {
		return nil, err
	}
	addrs, err := n.h.AddrList(l, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list addresses of %s: %w", dev.Name, err)
	}
	var out []netip.Prefix
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ones, _ := a.Mask.Size()
		out = append(out, netip.PrefixFrom(ip.Unmap(), ones))
	}
	return out, nil
}

func toIPNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: net.IP(p.Addr().AsSlice()), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (n *Netlink) AddAddr(dev Device, p netip.Prefix) error {
	l, err := n.link(dev)
	if err != nil {
		return err
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().AddrReplace(l, &netlink.Addr{IPNet: toIPNet(p)}) }); err != nil {
		return fmt.Errorf("add address %s to %s: %w", p, dev.Name, err)
	}
	return nil
}

func (n *Netlink) DelAddr(dev Device, p netip.Prefix) error {
	l, err := n.link(dev)
	if err != nil {
		return err
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().AddrDel(l, &netlink.Addr{IPNet: toIPNet(p)}) }); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("delete address %s from %s: %w", p, dev.Name, err)
	}
	return nil
}

func (n *Netlink) FDB(dev Device) ([]FDBEntry, error) {
	ns, err := n.h.NeighList(dev.Index, unix.AF_BRIDGE)
	if err != nil {
		return nil, fmt.Errorf("list fdb of %s: %w", dev.Name, err)
	}
	var out []FDBEntry
	for _, e := range ns {
		ip, ok := netip.AddrFromSlice(e.IP)
		if !ok || e.HardwareAddr == nil || e.LinkIndex != dev.Index {
			continue
		}
		out = append(out, FDBEntry{MAC: e.HardwareAddr.String(), Dst: ip.Unmap()})
	}
	return out, nil
}

func fdbNeigh(dev Device, e FDBEntry) (*netlink.Neigh, error) {
	hw, err := net.ParseMAC(e.MAC)
	if err != nil {
		return nil, fmt.Errorf("fdb mac %q: %w", e.MAC, err)
	}
	return &netlink.Neigh{
		LinkIndex: dev.Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, IP: net.IP(e.Dst.AsSlice()), HardwareAddr: hw,
	}, nil
}

func (n *Netlink) SetFDB(dev Device, e FDBEntry) error {
	nb, err := fdbNeigh(dev, e)
	if err != nil {
		return err
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().NeighSet(nb) }); err != nil {
		return fmt.Errorf("set fdb %s -> %s on %s: %w", e.MAC, e.Dst, dev.Name, err)
	}
	return nil
}

func (n *Netlink) DelFDB(dev Device, e FDBEntry) error {
	nb, err := fdbNeigh(dev, e)
	if err != nil {
		return err
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().NeighDel(nb) }); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete fdb %s -> %s on %s: %w", e.MAC, e.Dst, dev.Name, err)
	}
	return nil
}

func (n *Netlink) Neighs(dev Device) ([]NeighEntry, error) {
	ns, err := n.h.NeighList(dev.Index, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("list neighbours of %s: %w", dev.Name, err)
	}
	var out []NeighEntry
	for _, e := range ns {
		ip, ok := netip.AddrFromSlice(e.IP)
		if !ok || e.State&netlink.NUD_PERMANENT == 0 || e.LinkIndex != dev.Index {
			continue
		}
		out = append(out, NeighEntry{IP: ip.Unmap(), MAC: e.HardwareAddr.String()})
	}
	return out, nil
}

func inetNeigh(dev Device, e NeighEntry) (*netlink.Neigh, error) {
	hw, err := net.ParseMAC(e.MAC)
	if err != nil {
		return nil, fmt.Errorf("neighbour mac %q: %w", e.MAC, err)
	}
	return &netlink.Neigh{
		LinkIndex: dev.Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		Type: unix.RTN_UNICAST, IP: net.IP(e.IP.AsSlice()), HardwareAddr: hw,
	}, nil
}

func (n *Netlink) SetNeigh(dev Device, e NeighEntry) error {
	nb, err := inetNeigh(dev, e)
	if err != nil {
		return err
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().NeighSet(nb) }); err != nil {
		return fmt.Errorf("set neighbour %s -> %s on %s: %w", e.IP, e.MAC, dev.Name, err)
	}
	return nil
}

func (n *Netlink) DelNeigh(dev Device, e NeighEntry) error {
	nb, err := inetNeigh(dev, e)
	if err != nil {
		return err
	}
	if err := netlinkx.Do(func() error { return n.h.Raw().NeighDel(nb) }); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete neighbour %s on %s: %w", e.IP, dev.Name, err)
	}
	return nil
}
