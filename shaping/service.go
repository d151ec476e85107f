package shaping

import (
	"context"
	"encoding/json"
	"sync"
)

// Service is weftd's shaping: the reconciler run by a loop, switched on
// and off by the ConfigMap's bandwidth section. Off (no section), it
// removes what it placed and the plugin is not asked.
type Service struct {
	Rec  *Reconciler
	Mark func() // marks the loop dirty

	mu         sync.Mutex
	configured bool
	enabled    bool
	raw        json.RawMessage
	mtu        int
}

// NewService returns a service that is off until Configure turns it on.
func NewService(rec *Reconciler) *Service {
	rec.off, rec.waiting = true, true
	return &Service{Rec: rec}
}

// Validate decodes a bandwidth section (nil: shaping off).
func (s *Service) Validate(raw json.RawMessage) error {
	if raw == nil {
		return nil
	}
	_, err := ParseConfig(raw)
	return err
}

// Configure applies a validated section and the pods' MTU; it reports
// whether Weft shapes (the conflist follows).
func (s *Service) Configure(raw json.RawMessage, mtu int) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.configured && string(raw) == string(s.raw) && mtu == s.mtu {
		return s.enabled, nil
	}
	cfg := Config{}
	if raw != nil {
		c, err := ParseConfig(raw)
		if err != nil {
			return s.enabled, err
		}
		cfg = c
	}
	s.Rec.setConfig(cfg, mtu, raw != nil)
	s.raw, s.mtu, s.enabled, s.configured = raw, mtu, raw != nil, true
	if s.Mark != nil {
		s.Mark()
	}
	return s.enabled, nil
}

// Sync is the loop's sync.
func (s *Service) Sync(ctx context.Context, full bool) error { return s.Rec.Sync(ctx, full) }

func (r *Reconciler) setConfig(c Config, mtu int, on bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Config, r.MTU, r.off, r.waiting = c, mtu, !on, false
}
