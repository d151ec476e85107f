// Package backend defines what every weft backend (vxlan/, udp/, bgp/)
// implements, and the Manager that runs exactly one of them and can switch
// to another at runtime, make-before-break: the new backend starts next to
// the old one, the node publishes that it can decapsulate both, the new one
// converges, and only then is the old one stopped and cleaned up.
package backend

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/internal/fabric"
)

// Backend carries pod traffic to other nodes.
type Backend interface {
	// Type is the backend's name in net-conf.json (e.g. "vxlan").
	Type() string
	// Start creates or adopts the backend's devices for the local node
	// (never flushing what a previous weftd left) and returns what the
	// node must publish for peers.
	Start(ctx context.Context, local fabric.LocalNode) (fabric.Published, error)
	// Apply converges the data plane so every peer in the list is
	// reachable and nothing else is programmed. It is called on every
	// change and periodically, so it must also repair drift.
	Apply(ctx context.Context, peers []fabric.Peer) (fabric.ApplyResult, error)
	// Stop ends the backend. With cleanup its devices and entries are
	// removed (switching away, uninstall); without, they stay for the next
	// weftd to adopt so established traffic keeps flowing.
	Stop(ctx context.Context, cleanup bool) error
}

// Factory builds backends of one type from their net-conf.json section.
type Factory interface {
	Type() string
	ValidateConfig(raw json.RawMessage) error
	New(raw json.RawMessage) (Backend, error)
}

// Manager runs the active backend.
type Manager struct {
	factories map[string]Factory
	log       *slog.Logger

	mu      sync.Mutex
	cur     running
	old     *running // the backend being replaced, until cur converged
	applied bool     // cur converged at least once
}

type running struct {
	b   Backend
	raw json.RawMessage
	pub fabric.Published
}

// NewManager returns a manager that knows the given backend types.
func NewManager(factories []Factory, log *slog.Logger) *Manager {
	m := &Manager{factories: map[string]Factory{}, log: log.With("component", "backend")}
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
func (m *Manager) Ensure(ctx context.Context, sec config.Backend, local fabric.LocalNode) (fabric.Published, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur.b != nil && m.cur.b.Type() == sec.Type && jsonEqual(m.cur.raw, sec.Raw) {
		return m.cur.pub, nil
	}
	f, ok := m.factories[sec.Type]
	if !ok {
		return fabric.Published{}, fmt.Errorf("unknown backend %q", sec.Type)
	}
	nb, err := f.New(sec.Raw)
	if err != nil {
		return fabric.Published{}, fmt.Errorf("backend %s: %w", sec.Type, err)
	}
	if m.cur.b != nil && m.cur.b.Type() == sec.Type {
		// Same type, new parameters: the old instance lets go (keeping the
		// kernel state) and the new one adopts or replaces it.
		if err := m.cur.b.Stop(ctx, false); err != nil {
			m.log.Warn("stop backend for reconfiguration", "err", err)
		}
		m.cur = running{}
	}
	pub, err := nb.Start(ctx, local)
	if err != nil {
		return fabric.Published{}, fmt.Errorf("start backend %s: %w", sec.Type, err)
	}
	if m.cur.b != nil {
		m.log.Info("switching backend (make-before-break)", "from", m.cur.b.Type(), "to", sec.Type)
		old := m.cur
		m.old = &old
	}
	m.cur = running{b: nb, raw: sec.Raw, pub: pub}
	m.applied = false
	return pub, nil
}

// Apply converges the active backend (and, while switching, the one being
// replaced, so traffic keeps flowing). When the new backend has converged
// the old one is stopped with cleanup.
func (m *Manager) Apply(ctx context.Context, peers []fabric.Peer) (fabric.ApplyResult, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur.b == nil {
		return fabric.ApplyResult{}, errors.New("no backend running")
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
		if err := m.old.b.Stop(ctx, true); err != nil {
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
func (m *Manager) Published() fabric.Published {
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
		errs = append(errs, m.old.b.Stop(ctx, true))
		m.old = nil
	}
	if m.cur.b != nil {
		errs = append(errs, m.cur.b.Stop(ctx, cleanup))
		m.cur = running{}
	}
	return errors.Join(errs...)
}

func jsonEqual(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return string(a) == string(b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return string(xa) == string(ya)
}
