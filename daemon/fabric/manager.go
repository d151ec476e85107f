// Package fabric is the node's fabric: it runs the active backend and
// switches between backends (the contract they implement is
// internal/backend). A switch is make-before-break: the new backend starts
// next to the old one, the node publishes that it can decapsulate both, the
// new one converges (taking over each peer route from the old one with one
// replace in the shared route writer, internal/route), and only then is the
// old one stopped and cleaned up.
package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/internal/backend"
)

// Manager runs the active backend.
type Manager struct {
	factories map[string]backend.Factory
	log       *slog.Logger

	mu      sync.Mutex
	cur     running
	old     *running // the backend being replaced, until cur converged
	applied bool     // cur converged at least once
}

type running struct {
	b   backend.Backend
	raw json.RawMessage
	pub backend.Published
	// end cancels the backend's lifetime context (see backend.Backend).
	end context.CancelFunc
}

// stop stops r and then ends its lifetime context.
func (r running) stop(ctx context.Context, cleanup bool) error {
	err := r.b.Stop(ctx, cleanup)
	r.end()
	return err
}

// NewManager returns a manager that knows the given backend types.
func NewManager(factories []backend.Factory, log *slog.Logger) *Manager {
	m := &Manager{factories: map[string]backend.Factory{}, log: log.With("component", "backend")}
	for _, f := range factories {
		m.factories[f.Type()] = f
	}
	return m
}

// Validators returns the stage-two config validators of the known types.
func (m *Manager) Validators() map[string]config.BackendValidator {
	out := map[string]config.BackendValidator{}
	for t, f := range m.factories {
		out[t] = f
	}
	return out
}

// Ensure makes the backend of section (type + raw config) active for local.
// The same section again is a no-op. Another section of the same type
// restarts the backend in place (it adopts or replaces its own device);
// another type starts next to the current one, which keeps running until
// the new one has converged once (see Apply).
func (m *Manager) Ensure(ctx context.Context, sec config.Backend, local backend.LocalNode) (backend.Published, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur.b != nil && m.cur.b.Type() == sec.Type && config.SameJSON(m.cur.raw, sec.Raw) {
		if u, ok := m.cur.b.(backend.LocalUpdater); ok {
			u.UpdateLocal(local) // e.g. a label that changes the BGP topology
		}
		return m.cur.pub, nil
	}
	f, ok := m.factories[sec.Type]
	if !ok {
		return backend.Published{}, fmt.Errorf("unknown backend %q", sec.Type)
	}
	nb, err := f.New(sec.Raw)
	if err != nil {
		return backend.Published{}, fmt.Errorf("backend %s: %w", sec.Type, err)
	}
	if m.cur.b != nil && m.cur.b.Type() == sec.Type {
		// Same type, new parameters: the old instance lets go (keeping the
		// kernel state) and the new one adopts or replaces it.
		if err := m.cur.stop(ctx, false); err != nil {
			m.log.Warn("stop backend for reconfiguration", "err", err)
		}
		m.cur = running{}
	}
	// The lifetime context outlives this sync (it keeps ctx's values, not
	// its deadline) and ends when the backend is stopped.
	life, end := context.WithCancel(context.WithoutCancel(ctx))
	pub, err := nb.Start(life, local)
	if err != nil {
		end()
		return backend.Published{}, fmt.Errorf("start backend %s: %w", sec.Type, err)
	}
	if m.cur.b != nil {
		m.log.Info("switching backend (make-before-break)", "from", m.cur.b.Type(), "to", sec.Type)
		old := m.cur
		m.old = &old
	}
	m.cur = running{b: nb, raw: sec.Raw, pub: pub, end: end}
	m.applied = false
	return pub, nil
}

// Apply converges the active backend (and, while switching, the one being
// replaced, so traffic keeps flowing). When the new backend has converged
// the old one is stopped with cleanup.
func (m *Manager) Apply(ctx context.Context, peers []backend.Peer) (backend.ApplyResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur.b == nil {
		return backend.ApplyResult{}, errors.New("no backend running")
	}
	res, err := m.cur.b.Apply(ctx, peers)
	if err != nil {
		if m.old != nil {
			if _, oerr := m.old.b.Apply(ctx, peers); oerr != nil {
				m.log.Warn("old backend apply", "err", oerr)
			}
		}
		return res, err
	}
	if res.Published.Attrs != nil {
		m.cur.pub = res.Published
	}
	m.applied = true
	if m.old != nil {
		m.log.Info("new backend converged; stopping the old one", "old", m.old.b.Type())
		if err := m.old.stop(ctx, true); err != nil {
			m.log.Warn("stop old backend", "err", err)
		}
		m.old = nil
	}
	return res, nil
}

// Active returns the active backend type ("" when none).
func (m *Manager) Active() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur.b == nil {
		return ""
	}
	return m.cur.b.Type()
}

// Decapsulates lists the backends this node can receive right now: the
// active one and, during a switch, the one being replaced.
func (m *Manager) Decapsulates() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	if m.cur.b != nil {
		out = append(out, m.cur.b.Type())
	}
	if m.old != nil && !slices.Contains(out, m.old.b.Type()) {
		out = append(out, m.old.b.Type())
	}
	return out
}

// Published returns what the active backend needs published.
func (m *Manager) Published() backend.Published {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur.pub
}

// Converged reports whether the active backend has converged at least once.
func (m *Manager) Converged() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur.b != nil && m.applied
}

// Stop stops every running backend.
func (m *Manager) Stop(ctx context.Context, cleanup bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	if m.old != nil {
		errs = append(errs, m.old.stop(ctx, true))
		m.old = nil
	}
	if m.cur.b != nil {
		errs = append(errs, m.cur.stop(ctx, cleanup))
		m.cur = running{}
	}
	return errors.Join(errs...)
}
