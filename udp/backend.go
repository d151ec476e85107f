package udp

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

// Reporter takes informational readiness lines (daemon/api's Status).
type Reporter interface {
	Detail(key, value string)
}

// DetailOffload is the /readyz detail naming the relay's offload mode.
const DetailOffload = "udp-offload"

// Backend is the udp backend: the relay over weft.udp, run for the
// backend's lifetime, its routes (owner "udp") through the node's route
// writer and its port closed to all but the peers by the guard. It
// satisfies backend.Backend.
type Backend struct {
	cfg     Config
	k       Kernel
	routes  route.Writer
	guard   encapguard.Guard
	metrics *Metrics // nil: not exported
	status  Reporter // nil: no readiness details
	log     *slog.Logger

	mu    sync.Mutex
	life  context.Context
	local backend.LocalNode
	mtu   int
	run   *relayRun // nil before Start and after Stop
	up    bool
}

// relayRun is one relay over one open of the device.
type relayRun struct {
	relay *Relay
	index int // the device's ifindex when it was opened
	stop  context.CancelFunc
	done  chan struct{}
	err   error // what Run returned; read after done
}

func (r *relayRun) finished() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// New returns a backend over k that writes its routes through routes and
// guards its port with guard (nil: open to anyone, bare data path tests
// only). metrics and status may be nil.
func New(cfg Config, k Kernel, routes route.Writer, guard encapguard.Guard, metrics *Metrics, status Reporter, log *slog.Logger) *Backend {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Backend{cfg: cfg, k: k, routes: routes, guard: guard, metrics: metrics, status: status, log: log.With("backend", Type)}
}

// Type returns "udp".
func (b *Backend) Type() string { return Type }

// Identity is the section's encapsulation identity (Config.Identity): the
// owner of its routes and what peers must accept to be sent it.
func (b *Backend) Identity() string { return b.cfg.Identity() }

// Start opens (or adopts) weft.udp with the node's pod CIDR network
// address and runs the relay on life until Stop. Routes stay as they
// are until the first Apply.
func (b *Backend) Start(life context.Context, local backend.LocalNode) (backend.Published, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !local.UnderlayIP.Is4() || !local.PodCIDR.IsValid() {
		return backend.Published{}, fmt.Errorf("udp: local node needs an IPv4 underlay IP and a pod CIDR (got %v, %v)", local.UnderlayIP, local.PodCIDR)
	}
	um := local.UnderlayMTU
	if um == 0 && b.cfg.MTU == 0 {
		m, err := b.k.LinkMTU(local.UnderlayLink)
		if err != nil {
			return backend.Published{}, fmt.Errorf("udp: underlay mtu: %w", err)
		}
		um = m
	}
	b.life, b.local, b.mtu = life, local, b.cfg.DeviceMTU(um)
	if err := b.open(); err != nil {
		return backend.Published{}, err
	}
	b.up = true
	return b.published(), nil
}

func (b *Backend) published() backend.Published {
	return backend.Published{MTU: b.mtu, Attrs: map[string]string{}}
}

// open opens the device, gives it its address and starts a relay on it.
func (b *Backend) open() error {
	dev, err := b.k.OpenDevice(b.cfg.Device(), b.mtu)
	if err != nil {
		return fmt.Errorf("udp: open %s: %w", b.cfg.Device(), err)
	}
	index, err := b.ensureAddr()
	if err != nil {
		_ = dev.Close()
		return err
	}
	relay, err := NewRelay(Options{Device: dev, Bind: b.k.NewBind(), Port: uint16(b.cfg.Port), Log: b.log})
	if err != nil {
		_ = dev.Close()
		return fmt.Errorf("udp: %w", err)
	}
	ctx, stop := context.WithCancel(b.life)
	r := &relayRun{relay: relay, index: index, stop: stop, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = relay.Run(ctx)
	}()
	b.run = r
	b.metrics.attach(relay)
	b.log.Info("udp relay running", "device", b.cfg.Device(), "mtu", b.mtu, "port", b.cfg.Port, "offload", offloadDetail(relay.Stats()))
	return nil
}

// ensureAddr makes the pod CIDR's network address /32 the device's only
// IPv4 address (the source of the node's own ICMP errors, which peers
// check against its pod CIDR) and returns the device's ifindex.
func (b *Backend) ensureAddr() (int, error) {
	want := netip.PrefixFrom(b.local.PodCIDR.Masked().Addr(), 32)
	index, err := b.k.SetAddr(b.cfg.Device(), want)
	if err != nil {
		return 0, fmt.Errorf("udp: address %s on %s: %w", want, b.cfg.Device(), err)
	}
	return index, nil
}

// closeRun stops the relay and waits for it (or for ctx).
func (b *Backend) closeRun(ctx context.Context) error {
	r := b.run
	if r == nil {
		return nil
	}
	b.run = nil
	r.stop()
	select {
	case <-r.done:
	case <-ctx.Done():
		return fmt.Errorf("udp: relay did not stop: %w", ctx.Err())
	}
	b.metrics.detach(r.relay)
	return nil
}

// repair re-opens the device and the relay when the relay stopped (the
// device or the socket went away) or the device is no longer the one it
// runs on; it returns what happened, for ApplyResult.Problems.
func (b *Backend) repair(ctx context.Context) (string, error) {
	why := ""
	switch {
	case b.run == nil:
		why = "relay not running"
	case b.run.finished():
		why = fmt.Sprintf("relay stopped: %v", b.run.err)
	default:
		index, err := b.k.DeviceIndex(b.cfg.Device())
		if err != nil {
			return "", fmt.Errorf("udp: %w", err)
		}
		if index == b.run.index {
			return "", nil
		}
		why = fmt.Sprintf("device %s gone or recreated (index %d, relay on %d)", b.cfg.Device(), index, b.run.index)
	}
	b.log.Warn("udp relay restarting", "reason", why)
	if err := b.closeRun(ctx); err != nil {
		return why, err
	}
	if err := b.open(); err != nil {
		return why, fmt.Errorf("%s; re-open: %w", why, err)
	}
	return why + "; re-opened", nil
}

// Apply converges to peers: the relay's table (swapped atomically), the
// guard (first, so a new peer is admitted before routes make us answer)
// and the routes. A relay that stopped is re-opened and reported.
func (b *Backend) Apply(ctx context.Context, peers []backend.Peer) (backend.ApplyResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up {
		return backend.ApplyResult{}, errors.New("udp: not started")
	}
	res := backend.ApplyResult{Published: b.published()}
	why, err := b.repair(ctx)
	if why != "" {
		res.Problems = append(res.Problems, why)
		res.Changes++
	}
	if err != nil {
		return res, err
	}
	if _, err := b.ensureAddr(); err != nil {
		return res, err
	}
	// The relay and the guard know every peer (one may send this
	// identity as soon as it sees this node announce it, before this node
	// has seen it announce it back); routes go to those that accept it.
	all, want := b.peers(peers)
	res.Problems = append(res.Problems, b.run.relay.SetPeers([]netip.Prefix{b.local.PodCIDR.Masked()}, all)...)
	res.Peers = len(want)
	if b.guard != nil {
		n, err := b.guard.Apply(ctx, guardSpec(b.cfg, b.local.PodCIDR, all))
		res.Changes += n
		if err != nil {
			return res, fmt.Errorf("udp: %w", err)
		}
	}
	n, err := b.routes.Apply(ctx, b.Identity(), wantRoutes(b.cfg.Device(), want))
	res.Changes += n
	if b.status != nil {
		b.status.Detail(DetailOffload, offloadDetail(b.run.relay.Stats()))
	}
	if err != nil {
		return res, fmt.Errorf("udp: %w", err)
	}
	return res, nil
}

// peers are the remote nodes as the relay needs them: all of them, and
// those that decapsulate this identity.
func (b *Backend) peers(peers []backend.Peer) (all, accept []Peer) {
	for _, p := range peers {
		if p.Name == b.local.Name || p.UnderlayIP == b.local.UnderlayIP {
			continue
		}
		q := Peer{Name: p.Name, UnderlayIP: p.UnderlayIP, PodCIDRs: p.PodCIDRs}
		all = append(all, q)
		if p.Accepts(b.Identity()) {
			accept = append(accept, q)
		}
	}
	return all, accept
}

// wantRoutes routes every peer pod CIDR into the device.
func wantRoutes(dev string, peers []Peer) []route.Route {
	var out []route.Route
	for _, p := range peers {
		for _, c := range p.PodCIDRs {
			out = append(out, route.Route{Dst: c.Masked(), Dev: dev})
		}
	}
	return out
}

// guardSpec admits each peer's underlay address, for its pod CIDRs, to
// send to local, this node's pod CIDR. Pure.
func guardSpec(cfg Config, local netip.Prefix, peers []Peer) encapguard.Spec {
	e := encapguard.UDP(cfg.Port)
	e.Kind = cfg.GuardKind()
	s := encapguard.Spec{Encap: e, PodIface: encapguard.DefaultPodIface, Local: []netip.Prefix{local.Masked()}}
	for _, p := range peers {
		s.Peers = append(s.Peers, encapguard.Peer{Name: p.Name, UnderlayIP: p.UnderlayIP, PodCIDRs: p.PodCIDRs})
	}
	return s
}

func offloadDetail(s Stats) string {
	sock := s.SocketMode
	if s.UDPGSOOff {
		sock += " (gso refused)"
	}
	return fmt.Sprintf("tun %s, socket %s", s.TUNMode, sock)
}

// Stop stops the relay (the device stays, with its routes, for the next
// weftd to re-attach). With cleanup the routes are released (those
// another backend took over stay), the device and the guard removed.
func (b *Backend) Stop(ctx context.Context, cleanup bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.up = false
	errs := []error{b.closeRun(ctx)}
	if !cleanup {
		return errors.Join(errs...)
	}
	if b.status != nil {
		b.status.Detail(DetailOffload, "")
	}
	if _, err := b.routes.Release(ctx, b.Identity()); err != nil {
		errs = append(errs, fmt.Errorf("udp: %w", err))
	}
	return errors.Join(append(errs, removeAll(ctx, b.k, b.guard, b.cfg))...)
}

// removeAll deletes the device of cfg (and every route out of it) and its
// guard's chains and set (a nil k or guard is skipped).
func removeAll(ctx context.Context, k Kernel, guard encapguard.Guard, cfg Config) error {
	var rm func() error
	if k != nil {
		rm = func() error { return k.RemoveDevice(cfg.Device()) }
	}
	return backend.Teardown(ctx, Type, cfg.GuardKind(), rm, guard)
}
