package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/route"
)

// Factory builds bgp backends. It implements backend.Factory. Use one
// Factory per process (cmd/weftd assembles it): it owns the use of the
// process's one Speaker (NewGoBGP, whose server cannot be made twice) and
// the metrics of whichever backend runs.
type Factory struct {
	// Speaker is the process's speaker; nil only where no backend runs
	// (weftd uninstall, which only cleans up).
	Speaker Speaker
	// Routes is the node's one route writer.
	Routes route.Writer
	// Secrets reads TCP-MD5 passwords (nil: a peer with a
	// passwordSecretRef gets no session, reported).
	Secrets SecretGetter
	// Report shows the sessions in /readyz (nil: not shown).
	Report Reporter
	// IPIP opens the IP-in-IP data path of ipipMode Always and
	// CrossSubnet (nil: those modes fail at Start).
	IPIP IPIP
	// Guard closes IP-in-IP to all but the bgp nodes, each for its pod
	// CIDRs (encapguard.IPIP, in the raw table before the tunnel reads a
	// packet); required by ipipMode Always and CrossSubnet.
	Guard encapguard.Guard
	Log   *slog.Logger

	mu      sync.Mutex
	running bool // the speaker is started
	left    bool // ...by a backend stopped without cleanup
	stats   stats
}

var _ backend.Factory = (*Factory)(nil)

// Type returns "bgp".
func (*Factory) Type() string { return Type }

// ValidateConfig decodes the section strictly.
func (*Factory) ValidateConfig(raw json.RawMessage) error {
	_, err := DecodeConfig(raw)
	return err
}

// New returns a bgp backend for the section.
func (f *Factory) New(raw json.RawMessage) (backend.Backend, error) {
	cfg, err := DecodeConfig(raw)
	if err != nil {
		return nil, err
	}
	if f.Speaker == nil {
		return nil, errors.New("bgp: no speaker")
	}
	if f.Routes == nil {
		return nil, errors.New("bgp: no route writer")
	}
	return &Backend{cfg: cfg, f: f, log: f.logger().With("backend", Type), hold: Warmup}, nil
}

func (f *Factory) logger() *slog.Logger {
	if f.Log == nil {
		return slog.Default()
	}
	return f.Log
}

// Cleanup removes what any bgp backend could have left on the node: its
// routes, the device weft.ipip and the IP-in-IP guard. A running speaker
// is stopped.
func (f *Factory) Cleanup(ctx context.Context) error {
	var errs []error
	if err := f.stopSpeaker(ctx); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, f.closeIPIP(ctx, f.removeDevice()))
	if f.Routes != nil {
		if _, err := f.Routes.Release(ctx, Type); err != nil {
			errs = append(errs, fmt.Errorf("bgp: %w", err))
		}
	}
	return errors.Join(errs...)
}

// guardKind is the encapsulation guard's kind for IP-in-IP.
var guardKind = encapguard.IPIP().Kind

// applyGuard admits IP-in-IP from the bgp peers, each for its pod CIDRs,
// to local, this node's pod CIDRs.
func (f *Factory) applyGuard(ctx context.Context, local []netip.Prefix, peers []backend.Peer) error {
	s := encapguard.Spec{Encap: encapguard.IPIP(), PodIface: encapguard.DefaultPodIface, Local: local}
	for _, p := range peers {
		s.Peers = append(s.Peers, encapguard.Peer{Name: p.Name, UnderlayIP: p.UnderlayIP, PodCIDRs: p.PodCIDRs})
	}
	if _, err := f.Guard.Apply(ctx, s); err != nil {
		return fmt.Errorf("bgp: ip-in-ip guard: %w", err)
	}
	return nil
}

// ipipAvailable says whether ipipMode mode can run in this weftd: an
// IP-in-IP data path and the encapsulation guard.
func (f *Factory) ipipAvailable(mode IPIPMode) error {
	switch {
	case mode == IPIPNever:
		return nil
	case f.IPIP == nil:
		return fmt.Errorf("bgp: ipipMode %s is not available in this weftd (no IP-in-IP); use \"ipipMode\": \"Never\" (plain routes, needs L2 adjacency between nodes)", mode)
	case f.Guard == nil:
		return fmt.Errorf("bgp: ipipMode %s needs the encapsulation guard (none in this weftd)", mode)
	}
	return nil
}

// closeIPIP removes the IP-in-IP device with remove (nil: there is none to
// remove), then its guard: the guard only once the device is gone, since a
// kernel ipip link without the guard decapsulates from anyone.
func (f *Factory) closeIPIP(ctx context.Context, remove func() error) error {
	if remove != nil {
		if err := remove(); err != nil {
			return fmt.Errorf("bgp: ipip: %w (its guard stays)", err)
		}
	}
	return f.removeGuard(ctx)
}

// removeDevice is the IPIP's Remove, nil without an IPIP.
func (f *Factory) removeDevice() func() error {
	if f.IPIP == nil {
		return nil
	}
	return f.IPIP.Remove
}

// removeGuard deletes the IP-in-IP guard (nil Guard: nothing to do).
func (f *Factory) removeGuard(ctx context.Context) error {
	if f.Guard == nil {
		return nil
	}
	if err := f.Guard.Remove(ctx, guardKind); err != nil {
		return fmt.Errorf("bgp: ip-in-ip guard: %w", err)
	}
	return nil
}

// startSpeaker starts the speaker with cfg. A speaker a reconfigured
// backend left running (Stop without cleanup, then a new section of type
// bgp in the same process) is stopped first: its sessions re-form.
func (f *Factory) startSpeaker(ctx context.Context, cfg Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running {
		if !f.left {
			return errors.New("bgp: the speaker is in use by another bgp backend")
		}
		f.logger().Info("bgp: restarting the speaker for the new configuration (its sessions re-form)")
		if err := f.Speaker.Stop(ctx); err != nil {
			return fmt.Errorf("bgp: stop the previous speaker: %w", err)
		}
		f.running = false
	}
	if err := f.Speaker.Start(ctx, cfg); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	f.running, f.left = true, false
	return nil
}

func (f *Factory) stopSpeaker(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		return nil
	}
	if err := f.Speaker.Stop(ctx); err != nil {
		return fmt.Errorf("bgp: %w", err)
	}
	f.running, f.left = false, false
	return nil
}

// leaveSpeaker records that the stopped backend left the speaker running
// (for the graceful restart when weftd exits next).
func (f *Factory) leaveSpeaker() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.left = f.running
}

// stats is the last Snapshot of the running backend.
type stats struct {
	mu   sync.Mutex
	snap Snapshot
}

func (s *stats) set(snap Snapshot) { s.mu.Lock(); s.snap = snap; s.mu.Unlock() }
func (s *stats) reset()            { s.set(Snapshot{}) }
func (s *stats) get() Snapshot     { s.mu.Lock(); defer s.mu.Unlock(); return s.snap }

// Snapshot returns what the running backend last reported (zero when no
// bgp backend runs).
func (f *Factory) Snapshot() Snapshot { return f.stats.get() }

var (
	descSessions = prometheus.NewDesc("weft_bgp_sessions", "BGP sessions the node is configured with.", nil, nil)
	descEstab    = prometheus.NewDesc("weft_bgp_sessions_established", "BGP sessions in state Established.", nil, nil)
	descPeer     = prometheus.NewDesc("weft_bgp_session_established", "1 when the session with the peer is Established.", []string{"peer", "asn"}, nil)
	descLearned  = prometheus.NewDesc("weft_bgp_routes_learned", "Learned routes accepted by the import filter (one per prefix).", nil, nil)
	descRejected = prometheus.NewDesc("weft_bgp_routes_rejected", "Learned paths the import filter currently rejects.", nil, nil)
	descRejTotal = prometheus.NewDesc("weft_bgp_routes_rejected_total", "Distinct paths the import filter rejected since the speaker started.", nil, nil)
	descMode     = prometheus.NewDesc("weft_bgp_ipip_mode", "1 for the ipipMode the running bgp backend uses and its IP-in-IP implementation (impl \"\" for Never).", []string{"mode", "impl"}, nil)
)

// Describe implements prometheus.Collector.
func (f *Factory) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descEstab, descPeer, descLearned, descRejected, descRejTotal, descMode} {
		ch <- d
	}
}

// Collect implements prometheus.Collector: nothing while no bgp backend
// runs.
func (f *Factory) Collect(ch chan<- prometheus.Metric) {
	s := f.stats.get()
	if !s.Running {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	gauge(descSessions, float64(len(s.Sessions)))
	gauge(descEstab, float64(s.Established()))
	for _, p := range s.Sessions {
		gauge(descPeer, map[bool]float64{true: 1}[p.Established], p.Addr.String(), fmt.Sprint(p.ASN))
	}
	gauge(descLearned, float64(s.Learned))
	gauge(descRejected, float64(s.Rejected))
	ch <- prometheus.MustNewConstMetric(descRejTotal, prometheus.CounterValue, float64(s.RejectedTotal))
	gauge(descMode, 1, string(s.Mode), s.Impl)
}
