package podnet

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/subnetfile"
)

// bridgeCollision is the error for a bridge name taken by another kind of
// link. Nothing has been created when it is returned.
func bridgeCollision(name, kind string) error {
	return types.NewError(types.ErrInvalidNetworkConfig,
		fmt.Sprintf("bridge %q: a link of type %q already has this name", name, kind), "")
}

// lookupBridge returns the bridge called name, nil if there is none, or an
// error when the name belongs to a link that is not a bridge.
func lookupBridge(h *netlinkx.Handle, name string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		if netlinkx.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("look up bridge %s: %w", name, err)
	}
	if l.Type() != "bridge" {
		return nil, bridgeCollision(name, l.Type())
	}
	return l, nil
}

// ensureBridge returns the node bridge, up, creating it when missing.
func ensureBridge(h *netlinkx.Handle, name string, mtu int) (netlink.Link, error) {
	l, err := lookupBridge(h, name)
	if err != nil {
		return nil, err
	}
	if l == nil {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{
			Name: name, MTU: mtu, TxQLen: -1, Flags: net.FlagUp,
			// A fixed MAC keeps the gateway's address stable while
			// ports come and go.
			HardwareAddr: randomMAC(),
		}}
		err := netlinkx.Do(func() error { return h.Raw().LinkAdd(br) })
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		// Created by us or concurrently by another ADD: read it back.
		if l, err = lookupBridge(h, name); err != nil {
			return nil, err
		}
		if l == nil {
			return nil, fmt.Errorf("bridge %s vanished after creation", name)
		}
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		if err := netlinkx.Do(func() error { return h.Raw().LinkSetUp(l) }); err != nil {
			return nil, fmt.Errorf("set bridge %s up: %w", name, err)
		}
	}
	return l, nil
}

// ensureGateways puts each IP's gateway, with the IP's prefix length, on
// the bridge. An address already present is fine.
func ensureGateways(h *netlinkx.Handle, br netlink.Link, ips []*current.IPConfig) error {
	for _, ip := range ips {
		if ip.Gateway == nil {
			continue
		}
		a := &netlink.Addr{IPNet: &net.IPNet{IP: ip.Gateway, Mask: ip.Address.Mask}}
		if ip.Gateway.To4() == nil {
			a.Flags = unix.IFA_F_NODAD
		}
		err := netlinkx.Do(func() error { return h.Raw().AddrAdd(br, a) })
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add gateway %s to bridge %s: %w", a.IPNet, br.Attrs().Name, err)
		}
	}
	return nil
}

// enableForwarding turns on IP forwarding for the families in ips, writing
// only when it is off.
func enableForwarding(ips []*current.IPConfig) error {
	var v4, v6 bool
	for _, ip := range ips {
		if ip.Address.IP.To4() != nil {
			v4 = true
		} else {
			v6 = true
		}
	}
	if v4 {
		if err := sysctlOn("/proc/sys/net/ipv4/ip_forward"); err != nil {
			return err
		}
	}
	if v6 {
		if err := sysctlOn("/proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
			return err
		}
	}
	return nil
}

func sysctlOn(path string) error {
	b, err := os.ReadFile(path)
	if err == nil && strings.TrimSpace(string(b)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1"), 0o644); err != nil {
		return fmt.Errorf("enable forwarding (%s): %w", path, err)
	}
	return nil
}

// hasIPv6 reports whether ips holds an IPv6 address.
func hasIPv6(ips []*current.IPConfig) bool {
	for _, ip := range ips {
		if ip.Address.IP.To4() == nil {
			return true
		}
	}
	return false
}

// disableIPv6 sets net.ipv6.conf.<ifName>.disable_ipv6=1 in the calling
// thread's netns. The path is built by hand: a dotted interface name must
// not become a sysctl path separator. A kernel without IPv6 (booted with
// ipv6.disable=1: no /proc/sys/net/ipv6) needs nothing.
func disableIPv6(ifName string) error {
	path := filepath.Join("/proc/sys/net/ipv6/conf", ifName, "disable_ipv6")
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if errors.Is(err, fs.ErrNotExist) {
		if _, serr := os.Stat("/proc/sys/net/ipv6"); errors.Is(serr, fs.ErrNotExist) {
			return nil
		}
	}
	if err != nil {
		return fmt.Errorf("disable IPv6 on %s: %w", ifName, err)
	}
	_, err = f.Write([]byte("1"))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("disable IPv6 on %s: %w", ifName, err)
	}
	return nil
}

// podMTU decides the MTU of the pod's veth: the config's mtu, else the
// node subnet file's mtu (what the backend can carry), else the MTU of the
// link holding the node's default route, else 1500.
func podMTU(h *netlinkx.Handle, conf *NetConf) int {
	if conf.MTU > 0 {
		return conf.MTU
	}
	path := conf.SubnetFile
	if path == "" {
		path = subnetfile.DefaultPath
	}
	if f, err := subnetfile.Read(path); err == nil && f.MTU > 0 {
		return f.MTU
	}
	routes, err := h.Raw().RouteGet(net.IPv4(8, 8, 8, 8))
	if err == nil && len(routes) > 0 && routes[0].LinkIndex > 0 {
		if l, err := h.Raw().LinkByIndex(routes[0].LinkIndex); err == nil && l.Attrs().MTU >= 576 {
			return l.Attrs().MTU
		}
	}
	return 1500
}
