package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"github.com/weftnet/weft/internal/backend"
)

// Node labels and annotations the bgp backend reads and publishes.
const (
	// LabelRouteReflector = "true" makes a node a route reflector.
	LabelRouteReflector = "weft.dev/route-reflector"
	// AnnoASN is the operator's per-node AS number override.
	AnnoASN = "weft.dev/as-number"
	// AnnoSpeakerASN is the AS number the node's speaker runs with, as
	// weftd publishes it (the override, else the section's asNumber). It
	// is a different key from AnnoASN so that a published default never
	// turns into an override when the section's asNumber changes.
	AnnoSpeakerASN = "weft.dev/bgp-as-number"
)

// Warmup bounds how long after Start the backend keeps routes for the
// peers whose pod CIDR it has not learned yet (see Backend.routes).
const Warmup = 30 * time.Second

// statePoll is how often the running backend reads its sessions' states
// for /readyz and the metrics.
const statePoll = 5 * time.Second

// SecretGetter reads one key of a Secret in kube-system (the TCP-MD5
// passwords of external peers). weftd implements it with client-go.
type SecretGetter interface {
	SecretKey(ctx context.Context, name, key string) (string, error)
}

// Reporter takes the informational lines of /readyz (daemon/api.Status).
type Reporter interface {
	Detail(key, value string)
}

// DetailKey is the /readyz detail the backend reports its sessions under.
const DetailKey = "bgp"

// Backend is the bgp backend: it runs the node's Speaker with the sessions
// Sessions computes from the peers, advertises the node's pod CIDR and
// installs the accepted learned routes through the shared route writer.
// It satisfies backend.Backend and backend.LocalUpdater.
type Backend struct {
	cfg     BackendConfig
	f       *Factory
	log     *slog.Logger
	mu      sync.Mutex
	up      bool
	local   backend.LocalNode
	self    Node
	peers   []backend.Peer
	started time.Time
	warm    bool // every peer ran bgp and its CIDR was learned, or Warmup passed
	// last is the learned set of the previous converge (prefix -> the
	// neighbor it came from); held are the pod CIDRs of bgp peers lost
	// since without their owner withdrawing them (a session re-formed, a
	// reflector moved), with the time of the loss.
	last map[netip.Prefix]netip.Addr
	held map[netip.Prefix]time.Time
	hold time.Duration // how long a lost route is kept; Warmup unless a test says
	stop context.CancelFunc
	done chan struct{}
	mtu  int
	tun  Tunnel // ipipMode Always and CrossSubnet (or still received)
	life context.Context
	prev []BackendConfig // ipipModes still received (see Reconfigure)
}

// ipipOverhead is IP-in-IP's outer IPv4 header.
const ipipOverhead = 20

// impl is the IP-in-IP implementation in use ("" for ipipMode Never).
func (b *Backend) impl() string {
	if b.tun == nil {
		return ""
	}
	return b.tun.Impl()
}

var (
	_ backend.Backend      = (*Backend)(nil)
	_ backend.LocalUpdater = (*Backend)(nil)
)

// Type returns "bgp".
func (b *Backend) Type() string { return Type }

// Start starts the speaker on the node's underlay address and advertises
// the node's pod CIDR before any session exists (so a restarted weftd
// re-advertises at once, never waiting for a deferral timer). The route
// follower runs until life ends or Stop.
func (b *Backend) Start(life context.Context, local backend.LocalNode) (backend.Published, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.f.ipipAvailable(b.cfg.IPIPMode); err != nil {
		return backend.Published{}, err
	}
	if !local.UnderlayIP.Is4() || !local.PodCIDR.IsValid() || local.UnderlayLink == "" {
		return backend.Published{}, fmt.Errorf("bgp: local node needs an IPv4 underlay IP, its link and a pod CIDR (got %v, %q, %v)", local.UnderlayIP, local.UnderlayLink, local.PodCIDR)
	}
	if local.UnderlayMTU <= 0 {
		return backend.Published{}, fmt.Errorf("bgp: underlay link %s has no MTU", local.UnderlayLink)
	}
	self, err := b.nodeOf(local.Name, local.UnderlayIP, local.Attrs, local.Labels, []netip.Prefix{local.PodCIDR})
	if err != nil {
		return backend.Published{}, err
	}
	b.mtu = local.UnderlayMTU
	if b.cfg.IPIPMode == IPIPNever {
		// Nothing arrives in IP-in-IP: a device and a guard an earlier
		// weftd left go.
		if err := b.f.closeIPIP(life, b.f.removeDevice()); err != nil {
			return backend.Published{}, fmt.Errorf("bgp: ipipMode Never: %w", err)
		}
	} else {
		b.mtu = local.UnderlayMTU - ipipOverhead
		t, err := b.f.IPIP.Start(life, local, b.mtu)
		if err != nil {
			return backend.Published{}, fmt.Errorf("bgp: ipipMode %s: %w", b.cfg.IPIPMode, err)
		}
		b.tun = t
	}
	if err := b.startSpeaker(life, self); err != nil {
		if b.tun != nil {
			_ = b.tun.Stop(false)
			b.tun = nil
		}
		return backend.Published{}, err
	}
	b.local, b.self, b.up, b.started, b.warm, b.peers, b.life = local, self, true, time.Now(), false, nil, life
	b.last, b.held = nil, map[netip.Prefix]time.Time{}
	ctx, cancel := context.WithCancel(life)
	b.stop, b.done = cancel, make(chan struct{})
	go b.follow(ctx, b.done)
	b.log.Info("bgp speaker started", "asn", self.ASN, "listen", local.UnderlayIP, "port", b.cfg.Port,
		"ipip_mode", b.cfg.IPIPMode, "ipip", b.impl(), "pod_cidr", local.PodCIDR, "mtu", b.mtu)
	return b.published(), nil
}

// startSpeaker starts the speaker and advertises the own prefix before the
// first session (graceful restart).
func (b *Backend) startSpeaker(life context.Context, self Node) error {
	if err := b.f.startSpeaker(life, b.cfg.SpeakerConfig(self)); err != nil {
		return err
	}
	if err := b.f.Speaker.Advertise(life, self.PodCIDRs); err != nil {
		_ = b.f.stopSpeaker(context.WithoutCancel(life))
		return fmt.Errorf("bgp: advertise %v: %w", self.PodCIDRs, err)
	}
	return nil
}

func (b *Backend) published() backend.Published {
	return backend.Published{MTU: b.mtu, Attrs: map[string]string{AnnoSpeakerASN: strconv.FormatUint(uint64(b.self.ASN), 10)}}
}

// UpdateLocal takes the local node's new labels (a route-reflector label,
// a selector of an external peer); the next Apply re-forms the sessions.
func (b *Backend) UpdateLocal(local backend.LocalNode) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up {
		return
	}
	self, err := b.nodeOf(local.Name, b.local.UnderlayIP, local.Attrs, local.Labels, b.self.PodCIDRs)
	if err != nil {
		b.log.Warn("bgp: local node update ignored", "err", err)
		return
	}
	if self.ASN != b.self.ASN {
		b.log.Warn("bgp: the node's AS number changed; it takes effect when the backend restarts", "running", b.self.ASN, "annotated", self.ASN)
		self.ASN = b.self.ASN
	}
	b.self = self
}

// nodeOf is a node as the topology sees it: its AS number is the
// weft.dev/as-number annotation, else the section's.
func (b *Backend) nodeOf(name string, addr netip.Addr, attrs, labels map[string]string, cidrs []netip.Prefix) (Node, error) {
	n := Node{Name: name, Addr: addr, ASN: b.cfg.ASN, Labels: labels, PodCIDRs: cidrs,
		RouteReflector: labels[LabelRouteReflector] == "true"}
	if v, ok := attrs[AnnoASN]; ok {
		asn, err := strconv.ParseInt(v, 10, 64)
		if err == nil {
			n.ASN, err = checkASN(AnnoASN, asn)
		}
		if err != nil {
			return n, fmt.Errorf("node %s: annotation %s=%q: not a usable AS number", name, AnnoASN, v)
		}
	}
	return n, nil
}

// Apply re-forms the sessions for peers (full mesh, route reflectors,
// external peers), renews the import policy and converges the routes.
func (b *Backend) Apply(ctx context.Context, peers []backend.Peer) (backend.ApplyResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up {
		return backend.ApplyResult{}, errors.New("bgp: not started")
	}
	b.peers = peers
	all, speakers, probs := b.nodes(peers)
	// Sessions decides the topology over all nodes, the local one included
	// (it may be the only reflector).
	sessions := Sessions(b.self, append(speakers, b.self), b.cfg, nil)
	b.f.Speaker.SetImportPolicy(PolicyFor(b.self, all, sessions))
	bp, sprobs := b.resolve(ctx, sessions)
	probs = append(probs, sprobs...)
	if b.tun != nil {
		// The guard first, so a new peer is admitted before routes make
		// this node answer it. Every node, not only those announcing bgp:
		// one may send IP-in-IP as soon as it sees this node announce it,
		// before this node sees it announce it back.
		if err := b.f.applyGuard(ctx, b.self.PodCIDRs, peers); err != nil {
			return backend.ApplyResult{Published: b.published()}, err
		}
		probs = append(probs, b.tun.SetPeers(b.self.PodCIDRs, peers)...)
	}
	res := backend.ApplyResult{Published: b.published()}
	if err := b.f.Speaker.Advertise(ctx, b.self.PodCIDRs); err != nil {
		return res, fmt.Errorf("bgp: advertise: %w", err)
	}
	if err := b.f.Speaker.SetPeers(ctx, bp); err != nil {
		return res, fmt.Errorf("bgp: sessions: %w", err)
	}
	n, reached, err := b.converge(ctx)
	res.Changes, res.Peers = n, reached
	res.Problems = append(probs, b.unreached(speakers)...)
	b.report(ctx)
	return res, err
}

// nodes converts the peers: all of them (the owners of pod CIDRs for the
// import filter) and those that run bgp (the ones to have sessions with).
func (b *Backend) nodes(peers []backend.Peer) (all, speakers []Node, probs []string) {
	for _, p := range peers {
		n, err := b.nodeOf(p.Name, p.UnderlayIP, p.Attrs, p.Labels, p.PodCIDRs)
		if err != nil {
			probs = append(probs, err.Error())
			continue
		}
		all = append(all, n)
		if p.AcceptsType(Type) {
			speakers = append(speakers, n)
		}
	}
	return all, speakers, probs
}

// resolve turns sessions into speaker peers, reading the TCP-MD5 password
// of each external peer that has one. A peer whose password cannot be read
// gets no session (never one without its password).
func (b *Backend) resolve(ctx context.Context, sessions []Session) ([]Peer, []string) {
	var out []Peer
	var probs []string
	for _, s := range sessions {
		p := s.Peer
		if r := s.PasswordRef; r != nil {
			if b.f.Secrets == nil {
				probs = append(probs, fmt.Sprintf("bgp peer %s: passwordSecretRef set but weftd has no Secret access", p.Addr))
				continue
			}
			pw, err := b.f.Secrets.SecretKey(ctx, r.Name, r.Key)
			if err != nil {
				probs = append(probs, fmt.Sprintf("bgp peer %s: password from Secret kube-system/%s key %s: %v", p.Addr, r.Name, r.Key, err))
				continue
			}
			p.Password = pw
		}
		out = append(out, p)
	}
	return out, probs
}

// Stop ends the backend. With cleanup the speaker stops (its sessions
// close, so peers withdraw this node's CIDR at once), the routes are
// released and the IP-in-IP guard removed. Without, the speaker is left
// running and the routes (and guard) stay: when
// weftd exits next, its sessions drop without a NOTIFICATION and the peers
// keep this node's routes for the graceful restart time, until the next
// weftd re-advertises them.
func (b *Backend) Stop(ctx context.Context, cleanup bool) error {
	b.mu.Lock()
	if !b.up {
		b.mu.Unlock()
		return nil
	}
	b.up = false
	stop, done := b.stop, b.done
	b.mu.Unlock()
	stop()
	<-done
	if b.f.Report != nil {
		b.f.Report.Detail(DetailKey, "")
	}
	b.f.stats.reset()
	var errs []error
	if !cleanup {
		// The device, its routes and its guard stay for the next weftd.
		if b.tun != nil {
			if err := b.tun.Stop(false); err != nil {
				errs = append(errs, fmt.Errorf("bgp: ipip: %w", err))
			}
			b.tun = nil
		}
		b.f.leaveSpeaker()
		return errors.Join(errs...)
	}
	var remove func() error // no tunnel: only a guard an in-place move left
	if t := b.tun; t != nil {
		remove = func() error { return t.Stop(true) }
		b.tun = nil
	}
	errs = append(errs, b.f.closeIPIP(ctx, remove))
	if err := b.f.stopSpeaker(ctx); err != nil {
		errs = append(errs, err)
	}
	if _, err := b.f.Routes.Release(ctx, Type); err != nil {
		errs = append(errs, fmt.Errorf("bgp: %w", err))
	}
	return errors.Join(errs...)
}
