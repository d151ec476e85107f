// Package fabric is the node's fabric: it runs the backend the ConfigMap
// names and migrates between backends while pods keep talking (the
// contract backends implement is internal/backend).
//
// Every backend instance has an encapsulation identity (what it puts on
// the wire: "vxlan", "vxlan/7/4789", "udp", "bgp", "bgp/ipip"; see
// backend.Identified). A change of identity — another type, or another
// VNI, port or ipipMode — is a migration in three phases, per node and
// per peer:
//
//  1. receive: the new instance starts beside the old one (its device,
//     guard rules, sockets); the node publishes that it decapsulates both
//     (weft.dev/backends).
//  2. send: every instance is applied with every peer, and each routes
//     only to the peers that accept its identity; the shared route writer
//     (internal/route) gives each destination to the instance that wanted
//     it last, so a peer moves to the new instance by one atomic replace
//     exactly when it announces the new identity, and a peer that does not
//     keeps the old route. Once every peer accepts the new identity the
//     node publishes it as the one it sends with (weft.dev/backend).
//  3. drain: when every peer's weft.dev/backend is the new identity (no
//     one sends the old encapsulation to this node any more) and stays so
//     for the drain period, the old instances are stopped with cleanup and
//     the node stops announcing them.
//
// A change within one identity (an MTU, an AS number) restarts the
// instance in place (it adopts its own device). A backend that can change
// identity in place (backend.Reconfigurer: bgp, whose one speaker per
// process carries every ipipMode) does the same phases inside one
// instance. A second change during a migration supersedes it: the running
// target becomes one more old instance and drains like the others; going
// back to an identity still draining takes its devices over. A weftd
// restarted mid-migration finds the identities it announced in its own
// weft.dev/backends and starts receivers for them again, so it converges
// to the same end state.
package fabric

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/internal/backend"
)

// DefaultDrain is how long every peer must have announced the new
// identity before the old instances go: in-flight packets and a peer's
// informer lag, with margin.
const DefaultDrain = 2 * time.Second

// Migration phases (the weft.dev/migration annotation).
const (
	PhaseNone    = ""
	PhaseReceive = "receive"
	PhaseSend    = "send"
	PhaseDrain   = "drain"
)

// Manager runs the configured backend and migrates between backends.
type Manager struct {
	factories map[string]backend.Factory
	log       *slog.Logger
	drain     time.Duration

	mu         sync.Mutex
	cur        *instance   // the target: sends to every peer that accepts it
	olds       []*instance // still receiving, oldest first
	applied    bool        // cur converged at least once
	ready      bool        // cur converged since it became the target
	moved      bool        // every peer accepts cur (last Apply)
	drainSince time.Time   // every peer sends cur since then (zero: not yet)
	retired    map[string]bool
	wake       func()
	routes     Renewer
	peers      []backend.Peer // of the last Apply
	havePeers  bool
}

// Renewer is the route writer's Renew (internal/route.Table): routes are
// owned by identity.
type Renewer interface {
	Renew(owner string)
}

// SetRoutes gives the manager the node's route writer (nil: none).
func (m *Manager) SetRoutes(r Renewer) { m.routes = r }

// instance is one running backend, or (inPlace) an identity that a
// Reconfigurer still receives.
type instance struct {
	b       backend.Backend
	sec     config.Backend
	id      string
	pub     backend.Published
	end     context.CancelFunc // ends the backend's lifetime context
	inPlace bool
}

// stop stops the instance and then ends its lifetime context.
func (i *instance) stop(ctx context.Context, cleanup bool) error {
	err := i.b.Stop(ctx, cleanup)
	i.end()
	return err
}

// NewManager returns a manager that knows the given backend types, with
// the default drain period.
func NewManager(factories []backend.Factory, log *slog.Logger) *Manager {
	m := &Manager{factories: map[string]backend.Factory{}, log: log.With("component", "backend"),
		drain: DefaultDrain, retired: map[string]bool{}}
	for _, f := range factories {
		m.factories[f.Type()] = f
	}
	return m
}

// SetDrain sets the drain period (before the first Ensure).
func (m *Manager) SetDrain(d time.Duration) { m.drain = d }

// SetWake gives the manager a function that marks the agent dirty: it is
// called when a drain period ends, so the old backend goes without
// waiting for the next resync.
func (m *Manager) SetWake(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.wake = f
}

// Validators returns the stage-two config validators of the known types.
func (m *Manager) Validators() map[string]config.BackendValidator {
	out := map[string]config.BackendValidator{}
	for t, f := range m.factories {
		out[t] = f
	}
	return out
}

// Identity is the encapsulation identity of a section.
func (m *Manager) Identity(sec config.Backend) (string, error) {
	f, ok := m.factories[sec.Type]
	if !ok {
		return "", fmt.Errorf("unknown backend %q", sec.Type)
	}
	if i, ok := f.(backend.Identifier); ok {
		id, err := i.Identity(sec.Raw)
		if err != nil {
			return "", fmt.Errorf("backend %s: %w", sec.Type, err)
		}
		return id, nil
	}
	return sec.Type, nil
}

// Ensure makes sec the section the node migrates to (see the package
// doc). The first call also restarts receivers for the identities the
// node announced before (local.Attrs: its own weft.dev/backends).
func (m *Manager) Ensure(ctx context.Context, sec config.Backend, local backend.LocalNode) (backend.Published, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	id, err := m.Identity(sec)
	if err != nil {
		return backend.Published{}, err
	}
	if m.cur == nil {
		m.adopt(ctx, sec, id, local)
	}
	if err := m.ensure(ctx, sec, id, local); err != nil {
		return backend.Published{}, err
	}
	return m.published(), nil
}

// adopt replays the identities a previous weftd announced (oldest last in
// the annotation, so replayed first) as old instances. Failures are only
// logged: the configured section still starts.
func (m *Manager) adopt(ctx context.Context, sec config.Backend, id string, local backend.LocalNode) {
	prev := backend.ParseBackends(local.Attrs[backend.AnnoBackends])
	slices.Reverse(prev)
	for _, p := range prev {
		if p == id {
			continue
		}
		f, ok := m.factories[backend.IdentityType(p)]
		r, isRecv := f.(backend.Receiver)
		if !ok || !isRecv {
			m.log.Warn("cannot receive a previously announced encapsulation any more", "identity", p)
			continue
		}
		raw, ok := r.SectionFor(p, sec.Raw)
		if !ok {
			continue
		}
		if err := m.ensure(ctx, config.Backend{Type: f.Type(), Raw: raw}, p, local); err != nil {
			m.log.Warn("restart receiver of a migration in progress", "identity", p, "err", err)
			continue
		}
		m.log.Info("migration in progress found: receiving it again", "identity", p)
	}
}

// ensure is Ensure without adoption; m.mu is held.
func (m *Manager) ensure(ctx context.Context, sec config.Backend, id string, local backend.LocalNode) error {
	if c := m.cur; c != nil && c.id == id && c.sec.Type == sec.Type {
		if config.SameJSON(c.sec.Raw, sec.Raw) {
			if u, ok := c.b.(backend.LocalUpdater); ok {
				u.UpdateLocal(local) // e.g. a label that changes the BGP topology
			}
			return nil
		}
		if r, ok := c.b.(backend.Reconfigurer); ok {
			if pub, err := r.Reconfigure(ctx, sec.Raw); err == nil {
				c.sec, c.pub = sec, pub
				return nil
			}
		}
		return m.restart(ctx, sec, id, local)
	}
	if c := m.cur; c != nil && c.sec.Type == sec.Type {
		if r, ok := c.b.(backend.Reconfigurer); ok {
			err := m.reconfigure(ctx, r, sec, id)
			if err == nil {
				return nil
			}
			// More than the identity changed (bgp: the AS number too):
			// applied by a restart, which is not loss-free.
			m.log.Warn("cannot migrate in place; restarting the backend", "from", c.id, "to", id, "err", err)
			return m.restart(ctx, sec, id, local)
		}
	}
	// Back to an identity still draining: that instance lets go (keeping
	// its devices) and a fresh one adopts them, so its routes are claimed
	// anew and win over the superseded target's.
	if i := slices.IndexFunc(m.olds, func(o *instance) bool { return o.id == id && !o.inPlace }); i >= 0 {
		if err := m.olds[i].stop(ctx, false); err != nil {
			m.log.Warn("stop draining backend to take it over", "identity", id, "err", err)
		}
		m.olds = slices.Delete(m.olds, i, i+1)
	}
	inst, err := m.start(ctx, sec, id, local)
	if err != nil {
		return err
	}
	if m.routes != nil {
		m.routes.Renew(id) // a taken-over draining instance wins its routes back
	}
	if m.cur != nil {
		m.log.Info("migrating backend", "from", m.cur.id, "to", id, "phase", PhaseReceive)
		m.olds = append(m.olds, m.cur)
	}
	m.cur = inst
	m.applied, m.ready, m.moved, m.drainSince = false, false, false, time.Time{}
	m.converge(ctx)
	return nil
}

// converge applies a new migration target at once with the last peers, so
// its guard and tables admit them before the node announces it (in the
// same sync); m.mu is held.
func (m *Manager) converge(ctx context.Context) {
	if len(m.olds) == 0 || !m.havePeers {
		return
	}
	res, err := m.cur.b.Apply(ctx, m.peers)
	if err != nil {
		m.log.Warn("first converge of the new backend", "identity", m.cur.id, "err", err)
		return
	}
	if res.Published.Attrs != nil {
		m.cur.pub = res.Published
	}
	m.ready = true
}

// reconfigure migrates a Reconfigurer in place: the identity it sent with
// stays received (an inPlace old) until the drain.
func (m *Manager) reconfigure(ctx context.Context, r backend.Reconfigurer, sec config.Backend, id string) error {
	pub, err := r.Reconfigure(ctx, sec.Raw)
	if err != nil {
		return fmt.Errorf("reconfigure backend %s: %w", sec.Type, err)
	}
	prev := m.cur.id
	m.log.Info("migrating backend in place", "from", prev, "to", id, "phase", PhaseReceive)
	m.olds = slices.DeleteFunc(m.olds, func(o *instance) bool { return o.inPlace && o.id == id })
	if !slices.ContainsFunc(m.olds, func(o *instance) bool { return o.inPlace && o.id == prev }) {
		m.olds = append(m.olds, &instance{b: m.cur.b, id: prev, sec: m.cur.sec, inPlace: true})
	}
	m.cur.sec, m.cur.id, m.cur.pub = sec, id, pub
	m.ready, m.moved, m.drainSince = false, false, time.Time{}
	m.converge(ctx)
	return nil
}

// restart replaces cur by a fresh instance of the same identity: the old
// one lets go without cleanup, the new one adopts its devices.
func (m *Manager) restart(ctx context.Context, sec config.Backend, id string, local backend.LocalNode) error {
	if err := m.cur.stop(ctx, false); err != nil {
		m.log.Warn("stop backend for reconfiguration", "err", err)
	}
	m.olds = slices.DeleteFunc(m.olds, func(o *instance) bool { return o.inPlace && o.b == m.cur.b })
	m.cur = nil
	inst, err := m.start(ctx, sec, id, local)
	if err != nil {
		return err
	}
	m.cur, m.applied = inst, false
	return nil
}

// start builds and starts an instance of sec.
func (m *Manager) start(ctx context.Context, sec config.Backend, id string, local backend.LocalNode) (*instance, error) {
	f := m.factories[sec.Type]
	nb, err := f.New(sec.Raw)
	if err != nil {
		return nil, fmt.Errorf("backend %s: %w", sec.Type, err)
	}
	// The lifetime context outlives this sync (it keeps ctx's values, not
	// its deadline) and ends when the backend is stopped.
	life, end := context.WithCancel(context.WithoutCancel(ctx))
	pub, err := nb.Start(life, local)
	if err != nil {
		end()
		return nil, fmt.Errorf("start backend %s: %w", sec.Type, err)
	}
	return &instance{b: nb, sec: sec, id: id, pub: pub, end: end}, nil
}

// Apply converges every instance for peers, the old ones first so the
// target claims each destination it wants last (and so owns it), then
// advances the migration.
func (m *Manager) Apply(ctx context.Context, peers []backend.Peer) (backend.ApplyResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return backend.ApplyResult{}, errors.New("no backend running")
	}
	m.peers, m.havePeers = slices.Clone(peers), true
	for _, o := range m.olds {
		if o.inPlace {
			continue
		}
		res, err := o.b.Apply(ctx, peers)
		if err != nil {
			m.log.Warn("old backend apply", "identity", o.id, "err", err)
			continue
		}
		if res.Published.Attrs != nil {
			o.pub = res.Published
		}
	}
	res, err := m.cur.b.Apply(ctx, peers)
	if err != nil {
		return res, err
	}
	if res.Published.Attrs != nil {
		m.cur.pub = res.Published
	}
	m.applied, m.ready = true, true
	m.advance(ctx, peers)
	res.Published = m.published()
	return res, nil
}

// advance moves the migration on after a successful Apply; m.mu is held.
func (m *Manager) advance(ctx context.Context, peers []backend.Peer) {
	id := m.cur.id
	m.moved = !slices.ContainsFunc(peers, func(p backend.Peer) bool { return !p.Accepts(id) })
	if len(m.olds) == 0 {
		return
	}
	all := m.moved && !slices.ContainsFunc(peers, func(p backend.Peer) bool { return p.Attrs[backend.AnnoBackend] != id })
	if !all {
		m.drainSince = time.Time{}
		return
	}
	if m.drainSince.IsZero() {
		m.drainSince = time.Now()
		m.log.Info("every peer sends the new encapsulation; draining the old", "identity", id, "drain", m.drain)
		if m.wake != nil {
			time.AfterFunc(m.drain, m.wake)
		}
	}
	if time.Since(m.drainSince) < m.drain {
		return
	}
	m.teardown(ctx)
}

// teardown stops every old instance with cleanup; m.mu is held.
func (m *Manager) teardown(ctx context.Context) {
	for _, o := range slices.Backward(m.olds) {
		for k := range o.pub.Attrs {
			m.retired[k] = true
		}
		var err error
		switch {
		case o.inPlace && o.b == m.cur.b:
			err = o.b.(backend.Reconfigurer).Forget(ctx, o.id)
		case o.inPlace: // received by an old instance that stops below
		default:
			err = o.stop(ctx, true)
		}
		if err != nil {
			m.log.Warn("stop old backend", "identity", o.id, "err", err)
		}
		m.log.Info("old backend stopped", "identity", o.id, "now", m.cur.id)
	}
	m.olds, m.drainSince = nil, time.Time{}
}

// Active returns the identity the node sends with to every peer: the
// target once every peer accepts it, else the newest old one ("" before
// any backend runs).
func (m *Manager) Active() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.sending()
}

func (m *Manager) sending() string {
	switch {
	case m.cur == nil:
		return ""
	case m.moved || len(m.olds) == 0:
		return m.cur.id
	default:
		return m.olds[len(m.olds)-1].id
	}
}

// Phase is the migration phase (PhaseNone when none runs).
func (m *Manager) Phase() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.phase()
}

func (m *Manager) phase() string {
	switch {
	case len(m.olds) == 0:
		return PhaseNone
	case !m.moved:
		return PhaseReceive
	case m.drainSince.IsZero():
		return PhaseSend
	default:
		return PhaseDrain
	}
}

// Decapsulates lists the identities this node can receive right now: the
// target first, then the old ones, newest first. During a migration the
// target is listed only once it converged (its guard admits the peers, its
// relay or tunnel knows them): a peer sends it as soon as it is listed.
func (m *Manager) Decapsulates() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.decapsulates()
}

func (m *Manager) decapsulates() []string {
	var out []string
	if m.cur != nil && (m.ready || len(m.olds) == 0) {
		out = append(out, m.cur.id)
	}
	for _, o := range slices.Backward(m.olds) {
		if !slices.Contains(out, o.id) {
			out = append(out, o.id)
		}
	}
	return out
}

// Published returns what the node must publish for its instances: the
// smallest MTU among them and the union of their annotations (the
// target's win); keys of stopped instances are published empty.
func (m *Manager) Published() backend.Published {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.published()
}

func (m *Manager) published() backend.Published {
	if m.cur == nil {
		return backend.Published{}
	}
	out := backend.Published{MTU: m.cur.pub.MTU, Attrs: map[string]string{}}
	for k := range m.retired {
		out.Attrs[k] = ""
	}
	for _, o := range m.olds {
		if o.inPlace {
			continue
		}
		maps.Copy(out.Attrs, o.pub.Attrs)
		if o.pub.MTU > 0 && o.pub.MTU < out.MTU {
			out.MTU = o.pub.MTU
		}
	}
	maps.Copy(out.Attrs, m.cur.pub.Attrs)
	return out
}

// Converged reports whether the target has converged at least once.
func (m *Manager) Converged() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur != nil && m.applied
}

// Stop stops every running instance. Without cleanup (weftd exits)
// everything stays for the next weftd, which finds a migration in
// progress through its own annotations and resumes it.
func (m *Manager) Stop(ctx context.Context, cleanup bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, o := range m.olds {
		if !o.inPlace {
			errs = append(errs, o.stop(ctx, cleanup))
		}
	}
	m.olds = nil
	if m.cur != nil {
		errs = append(errs, m.cur.stop(ctx, cleanup))
		m.cur = nil
	}
	return errors.Join(errs...)
}

// Status is the manager's state for metrics and weftctl.
type Status struct {
	Sending      string
	Decapsulates []string
	Phase        string
}

// Snapshot returns the current Status.
func (m *Manager) Snapshot() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	return Status{Sending: m.sending(), Decapsulates: m.decapsulates(), Phase: m.phase()}
}
