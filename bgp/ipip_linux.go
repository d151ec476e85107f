package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/ipip"
)

// UserspaceIPIP is the IPIP of a node whose kernel has no ipip module:
// the ipip room's userspace tunnel (TUN weft.ipip and a raw IP-protocol-4
// socket), in the caller's network namespace. Where the kernel has the
// module it refuses to start (the kernel ipip link is not wired yet).
type UserspaceIPIP struct {
	Log *slog.Logger
}

// Start implements IPIP.
func (u UserspaceIPIP) Start(ctx context.Context, local backend.LocalNode, mtu int) (Tunnel, error) {
	log := u.Log
	if log == nil {
		log = slog.Default()
	}
	roots, err := ipip.HostRoots()
	if err != nil {
		return nil, err
	}
	det := ipip.Detect(roots)
	if det.Mode != ipip.Userspace {
		return nil, fmt.Errorf("ipip: this kernel has ipip (%s); the kernel ipip link is not wired into the bgp backend yet", det.Reason)
	}
	subnet, err := underlaySubnet(local.UnderlayLink, local.UnderlayIP)
	if err != nil {
		return nil, err
	}
	dev, err := ipip.OpenDevice(ipip.DeviceOptions{MTU: mtu, PodCIDR: local.PodCIDR, Log: log})
	if err != nil {
		return nil, err
	}
	segMTU := local.PodMTU // merged TCP segments from GRO are cut to the pods' MTU
	if segMTU <= 0 {
		segMTU = local.UnderlayMTU - backend.MaxOverhead
	}
	t, err := ipip.NewTunnel(ipip.Options{Device: dev, LocalIP: local.UnderlayIP, Log: log, SegmentMTU: segMTU})
	if err != nil {
		_ = dev.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	ut := &userspaceTunnel{t: t, subnet: subnet, cancel: cancel, done: make(chan error, 1)}
	go func() { ut.done <- t.Run(ctx) }()
	log.Info("ipip tunnel running", "impl", ipip.Userspace, "why", det.Reason, "device", ipip.DefaultDevice, "mtu", mtu)
	return ut, nil
}

// Remove implements IPIP.
func (UserspaceIPIP) Remove() error { return ipip.RemoveDevice("", "") }

type userspaceTunnel struct {
	t      *ipip.Tunnel
	subnet netip.Prefix
	cancel context.CancelFunc
	done   chan error
}

func (u *userspaceTunnel) Device() string               { return ipip.DefaultDevice }
func (u *userspaceTunnel) Impl() string                 { return string(u.t.Mode()) }
func (u *userspaceTunnel) UnderlaySubnet() netip.Prefix { return u.subnet }

func (u *userspaceTunnel) SetPeers(local []netip.Prefix, peers []backend.Peer) []string {
	ps := make([]ipip.Peer, 0, len(peers))
	for _, p := range peers {
		ps = append(ps, ipip.Peer{Name: p.Name, UnderlayIP: p.UnderlayIP, PodCIDRs: p.PodCIDRs})
	}
	return u.t.SetPeers(local, ps)
}

func (u *userspaceTunnel) Stop(remove bool) error {
	u.cancel()
	err := <-u.done
	if remove {
		err = errors.Join(err, ipip.RemoveDevice("", ""))
	}
	return err
}

// underlaySubnet is the prefix of ip as configured on link.
func underlaySubnet(link string, ip netip.Addr) (netip.Prefix, error) {
	h, err := netlinkx.OpenAt("", unix.NETLINK_ROUTE)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipip: netlink: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(link)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipip: underlay link %s: %w", link, err)
	}
	addrs, err := h.AddrList(l, unix.AF_INET)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ipip: addresses of %s: %w", link, err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP.To4()); ok && got == ip {
			ones, _ := a.Mask.Size()
			return netip.PrefixFrom(ip, ones).Masked(), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("ipip: %s is not on %s", ip, link)
}
