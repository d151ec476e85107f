package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/ipip"
)

// HostIPIP is the IP-in-IP weftd runs: the kernel's ipip link where the
// kernel has the ipip module (KernelIPIP), the userspace tunnel where it
// has not (UserspaceIPIP, as on machines without the module). ipip.Detect
// decides, without loading anything; the choice and why are logged, and
// the tunnel's Impl names it in /readyz and the metrics.
type HostIPIP struct {
	Log *slog.Logger
	// Roots are where detection looks (zero: this host's /sys and
	// /lib/modules).
	Roots ipip.Roots
	// Links makes the kernel link (nil: netlink in the caller's
	// namespace).
	Links ipip.Links
}

func (h HostIPIP) detect() (ipip.Detection, error) {
	r := h.Roots
	if r == (ipip.Roots{}) {
		var err error
		if r, err = ipip.HostRoots(); err != nil {
			return ipip.Detection{}, err
		}
	}
	return ipip.Detect(r), nil
}

// Start implements IPIP.
func (h HostIPIP) Start(ctx context.Context, local backend.LocalNode, mtu int) (Tunnel, error) {
	det, err := h.detect()
	if err != nil {
		return nil, err
	}
	if det.Mode == ipip.Kernel {
		return KernelIPIP{Log: h.Log, Links: h.Links, why: det.Reason}.Start(ctx, local, mtu)
	}
	return UserspaceIPIP{Log: h.Log}.Start(ctx, local, mtu)
}

// Remove implements IPIP: the device goes whichever kind it is.
func (HostIPIP) Remove() error { return ipip.RemoveDevice("", "") }

// KernelIPIP is the kernel's ipip link weft.ipip (local the node's
// underlay address, remote any): routes into it go via the peer's
// underlay address, onlink, and the kernel encapsulates and decapsulates.
// The encapsulation guard filters what reaches it as for the userspace
// tunnel; a link Start creates stays down until SetPeers, which the
// backend calls only once the guard is applied. The link outlives weftd
// (a restart adopts it: forwarding never stops); Stop with remove deletes
// it.
type KernelIPIP struct {
	Log   *slog.Logger
	Links ipip.Links // nil: netlink in the caller's namespace
	why   string
}

// Start implements IPIP.
func (k KernelIPIP) Start(_ context.Context, local backend.LocalNode, mtu int) (Tunnel, error) {
	log := k.Log
	if log == nil {
		log = slog.Default()
	}
	subnet, err := underlaySubnet(local.UnderlayLink, local.UnderlayIP)
	if err != nil {
		return nil, err
	}
	o := ipip.KernelOptions{LocalIP: local.UnderlayIP, MTU: mtu, PodCIDR: local.PodCIDR}
	links := k.Links
	var created bool
	if links == nil {
		created, err = ipip.OpenKernelLink("", o)
	} else {
		created, err = ipip.EnsureKernelLink(links, o)
	}
	if err != nil {
		return nil, err
	}
	log.Info("ipip tunnel running", "impl", ipip.Kernel, "why", k.why, "device", ipip.DefaultDevice, "mtu", mtu, "created", created)
	return &kernelTunnel{subnet: subnet, links: links}, nil
}

// Remove implements IPIP.
func (KernelIPIP) Remove() error { return ipip.RemoveDevice("", "") }

type kernelTunnel struct {
	subnet netip.Prefix
	links  ipip.Links
}

func (*kernelTunnel) Device() string                 { return ipip.DefaultDevice }
func (*kernelTunnel) Impl() string                   { return string(ipip.Kernel) }
func (k *kernelTunnel) UnderlaySubnet() netip.Prefix { return k.subnet }
func (*kernelTunnel) ViaPeer() bool                  { return true }

// SetPeers implements Tunnel: the kernel link has no peer table (the
// routes name the peers; the encapsulation guard admits only nodes). The
// backend calls it after the guard is applied, so it is where a link
// EnsureKernelLink created (down) comes up.
func (k *kernelTunnel) SetPeers([]netip.Prefix, []backend.Peer) []string {
	var err error
	if k.links != nil {
		err = ipip.KernelLinkUp(k.links, ipip.DefaultDevice)
	} else {
		err = ipip.OpenKernelLinkUp("", ipip.DefaultDevice)
	}
	if err != nil {
		return []string{err.Error()}
	}
	return nil
}

func (k *kernelTunnel) Stop(remove bool) error {
	if !remove {
		return nil
	}
	if k.links != nil {
		l, err := k.links.LinkByName(ipip.DefaultDevice)
		if err != nil {
			if netlinkx.IsNotFound(err) {
				return nil
			}
			return err
		}
		return k.links.LinkDel(l)
	}
	return ipip.RemoveDevice("", "")
}

// UserspaceIPIP is the IPIP of a node whose kernel has no ipip module:
// the ipip room's userspace tunnel (TUN weft.ipip and a raw IP-protocol-4
// socket), in the caller's network namespace. Where the kernel has the
// module it refuses to start (the kernel would take the packets too; use
// HostIPIP).
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
		return nil, fmt.Errorf("ipip: this kernel has ipip (%s); the userspace tunnel is refused, use the kernel link (HostIPIP)", det.Reason)
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

	stopOnce sync.Once
	stopErr  error
}

func (u *userspaceTunnel) Device() string               { return ipip.DefaultDevice }
func (u *userspaceTunnel) Impl() string                 { return string(u.t.Mode()) }
func (u *userspaceTunnel) UnderlaySubnet() netip.Prefix { return u.subnet }
func (u *userspaceTunnel) ViaPeer() bool                { return false }

func (u *userspaceTunnel) SetPeers(local []netip.Prefix, peers []backend.Peer) []string {
	ps := make([]ipip.Peer, 0, len(peers))
	for _, p := range peers {
		ps = append(ps, ipip.Peer{Name: p.Name, UnderlayIP: p.UnderlayIP, PodCIDRs: p.PodCIDRs})
	}
	return u.t.SetPeers(local, ps)
}

// Stop implements Tunnel; a second Stop returns the first one's result
// (and removes the device if asked).
func (u *userspaceTunnel) Stop(remove bool) error {
	u.stopOnce.Do(func() {
		u.cancel()
		u.stopErr = <-u.done
	})
	err := u.stopErr
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
