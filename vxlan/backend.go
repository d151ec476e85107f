package vxlan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/route"
)

// Backend is the VXLAN backend. It satisfies backend.Backend (internal/backend).
type Backend struct {
	cfg    Config
	k      Kernel
	routes route.Writer     // shared by every backend of the node
	guard  encapguard.Guard // nil: the port is left open (tests of the bare data path only)
	log    *slog.Logger

	mu    sync.Mutex
	local backend.LocalNode
	dev   Device
	spec  DeviceSpec
	up    bool
}

// New returns a backend that programs k, writes its routes through routes
// (owner "vxlan") and keeps the VXLAN port closed to all but the peers
// through guard (see internal/encapguard). A nil guard leaves the port
// open to anyone; only tests of the bare data path pass nil.
func New(cfg Config, k Kernel, routes route.Writer, guard encapguard.Guard, log *slog.Logger) *Backend {
	return &Backend{cfg: cfg, k: k, routes: routes, guard: guard, log: log.With("backend", Type)}
}

// Type returns "vxlan".
func (b *Backend) Type() string { return Type }

// Identity is the section's encapsulation identity (Config.Identity): the
// owner of its routes and what peers must accept to be sent it.
func (b *Backend) Identity() string { return b.cfg.Identity() }

// Start creates the device or adopts an existing matching one (keeping its
// MAC and all entries), gives it the node subnet's network address /32 and
// returns what peers need.
func (b *Backend) Start(ctx context.Context, local backend.LocalNode) (backend.Published, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !local.UnderlayIP.Is4() || !local.PodCIDR.IsValid() {
		return backend.Published{}, fmt.Errorf("vxlan: local node needs an IPv4 underlay IP and a pod CIDR (got %v, %v)", local.UnderlayIP, local.PodCIDR)
	}
	mtu := b.cfg.MTU
	if mtu == 0 {
		um := local.UnderlayMTU
		if um == 0 {
			m, err := b.k.LinkMTU(local.UnderlayLink)
			if err != nil {
				return backend.Published{}, fmt.Errorf("vxlan: underlay mtu: %w", err)
			}
			um = m
		}
		mtu = um - Overhead
	}
	b.local = local
	// A weftd before the route protocol wrote RTPROT_STATIC routes here.
	b.routes.Adopt(b.cfg.Device())
	b.spec = DeviceSpec{Name: b.cfg.Device(), VNI: b.cfg.VNI, Port: b.cfg.Port, LocalIP: local.UnderlayIP, UnderlayLink: local.UnderlayLink, MTU: mtu}
	if _, err := b.ensureDevice(); err != nil {
		return backend.Published{}, err
	}
	b.up = true
	return b.published(), nil
}

func (b *Backend) published() backend.Published {
	return backend.Published{MTU: b.dev.MTU, Attrs: map[string]string{b.cfg.MACAnnotation(): b.dev.MAC}}
}

// ensureDevice makes sure the device and its address exist; it returns the
// number of changes made.
func (b *Backend) ensureDevice() (int, error) {
	changes := 0
	dev, err := b.k.EnsureDevice(b.spec)
	if err != nil {
		return 0, fmt.Errorf("vxlan: %w", err)
	}
	if b.dev.Index != 0 && (dev.Index != b.dev.Index || dev.MAC != b.dev.MAC) {
		b.log.Warn("vxlan device was recreated", "old_mac", b.dev.MAC, "mac", dev.MAC)
		changes++
	} else if b.dev.Index == 0 {
		b.log.Info("vxlan device ready", "device", dev.Name, "adopted", dev.Adopted, "mac", dev.MAC, "mtu", dev.MTU, "vni", b.spec.VNI, "port", b.spec.Port)
	}
	b.dev = dev
	want := netip.PrefixFrom(b.local.PodCIDR.Masked().Addr(), 32)
	addrs, err := b.k.Addrs(dev)
	if err != nil {
		return changes, fmt.Errorf("vxlan: %w", err)
	}
	have := false
	for _, a := range addrs {
		if a == want {
			have = true
			continue
		}
		if a.Addr().Is4() {
			if err := b.k.DelAddr(dev, a); err != nil {
				return changes, fmt.Errorf("vxlan: %w", err)
			}
			changes++
		}
	}
	if !have {
		if err := b.k.AddAddr(dev, want); err != nil {
			return changes, fmt.Errorf("vxlan: %w", err)
		}
		changes++
	}
	return changes, nil
}

// Apply converges the device's FDB, neighbour and route entries to what
// Desired computes for peers. It reads the kernel each time, so calling it
// periodically repairs drift. Additions go FDB -> neighbour -> route and
// removals in the reverse order, so no route points at a missing entry.
func (b *Backend) Apply(ctx context.Context, peers []backend.Peer) (backend.ApplyResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up {
		return backend.ApplyResult{}, errors.New("vxlan: not started")
	}
	changes, err := b.ensureDevice()
	if err != nil {
		return backend.ApplyResult{}, err
	}
	want, probs := DesiredFor(b.cfg, b.local, peers)
	res := backend.ApplyResult{Peers: len(want.FDB), Published: b.published()}
	for _, p := range probs {
		res.Problems = append(res.Problems, p.String())
	}
	// The guard first: a new peer's packets are admitted before our routes
	// make it answer; a removed peer's routes go below, its admission now.
	if b.guard != nil {
		n, err := b.guard.Apply(ctx, guardSpec(b.cfg, b.local.PodCIDR, admitted(b.cfg, b.local, peers)))
		changes += n
		if err != nil {
			res.Changes = changes
			return res, fmt.Errorf("vxlan: %w", err)
		}
	}
	// Only now, behind the guard, does a device Start created come up
	// (ensureDevice has just read whether it is).
	if !b.dev.Up {
		up, err := b.k.SetUp(b.dev)
		if err != nil {
			res.Changes = changes
			return res, fmt.Errorf("vxlan: %w", err)
		}
		if up {
			changes++
		}
		b.dev.Up = true
	}
	n, err := b.converge(ctx, want)
	res.Changes = changes + n
	return res, err
}

func (b *Backend) converge(ctx context.Context, want State) (int, error) {
	dev := b.dev
	fdb, err := b.k.FDB(dev)
	if err != nil {
		return 0, err
	}
	neighs, err := b.k.Neighs(dev)
	if err != nil {
		return 0, err
	}
	var errs []error
	changes := 0
	do := func(err error) {
		if err != nil {
			errs = append(errs, err)
		} else {
			changes++
		}
	}
	// Additions and replacements.
	haveFDB := map[string]netip.Addr{}
	for _, e := range fdb {
		haveFDB[e.MAC] = e.Dst
	}
	for mac, dst := range want.FDB {
		if d, ok := haveFDB[mac]; !ok || d != dst {
			do(b.k.SetFDB(dev, FDBEntry{MAC: mac, Dst: dst}))
		}
	}
	haveNeigh := map[netip.Addr]string{}
	for _, e := range neighs {
		haveNeigh[e.IP] = e.MAC
	}
	for ip, mac := range want.Neigh {
		if m, ok := haveNeigh[ip]; !ok || m != mac {
			do(b.k.SetNeigh(dev, NeighEntry{IP: ip, MAC: mac}))
		}
	}
	// Routes: the writer replaces what differs and removes our routes
	// that are not wanted (a destination another backend took over stays).
	n, err := b.routes.Apply(ctx, b.Identity(), b.wantRoutes(want))
	changes += n
	if err != nil {
		errs = append(errs, err)
	}
	if err := ctx.Err(); err != nil {
		return changes, errors.Join(append(errs, err)...)
	}
	// Removals: every entry on our device that is not wanted.
	for _, e := range neighs {
		if _, ok := want.Neigh[e.IP]; !ok {
			do(b.k.DelNeigh(dev, e))
		}
	}
	for _, e := range fdb {
		if _, ok := want.FDB[e.MAC]; !ok {
			do(b.k.DelFDB(dev, e))
		}
	}
	return changes, errors.Join(errs...)
}

// wantRoutes are the routes of st: each peer subnet via its network
// address, onlink, out of the device.
func (b *Backend) wantRoutes(st State) []route.Route {
	out := make([]route.Route, 0, len(st.Routes))
	for dst, gw := range st.Routes {
		out = append(out, route.Route{Dst: dst, Gw: gw, Dev: b.dev.Name, OnLink: true})
	}
	return out
}

// Stop ends the backend. With cleanup its routes are released (those
// another backend took over stay) and the device and so every entry on it
// is removed (switching away, uninstall); without, everything stays for
// the next weftd to adopt, so established pod traffic keeps flowing.
func (b *Backend) Stop(ctx context.Context, cleanup bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.up = false
	if !cleanup {
		return nil
	}
	var errs []error
	if _, err := b.routes.Release(ctx, b.Identity()); err != nil {
		errs = append(errs, fmt.Errorf("vxlan: %w", err))
	}
	return errors.Join(append(errs, removeAll(ctx, b.k, b.guard, b.cfg))...)
}

// removeAll deletes the device of cfg (and with it every entry and route
// on it) and its guard's chains and set (a nil k or guard is skipped).
func removeAll(ctx context.Context, k Kernel, guard encapguard.Guard, cfg Config) error {
	var rm func() error
	if k != nil {
		rm = func() error { return k.DeleteDevice(cfg.Device()) }
	}
	return backend.Teardown(ctx, Type, cfg.GuardKind(), rm, guard)
}
