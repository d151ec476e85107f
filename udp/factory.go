package udp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/route"
)

// Factory builds udp backends over one kernel, each writing its routes
// through Routes (the node's one route writer, shared with the other
// backends so a switch hands each destination over by one replace) and
// guarding its port with Guard (required). Metrics and Status (readiness
// details) are optional. It implements backend.Factory.
type Factory struct {
	Kernel  Kernel
	Routes  route.Writer
	Guard   encapguard.Guard
	Metrics *Metrics
	Status  Reporter
	Log     *slog.Logger
}

// Type returns "udp".
func (Factory) Type() string { return Type }

// ValidateConfig decodes the section strictly.
func (Factory) ValidateConfig(raw json.RawMessage) error {
	_, err := DecodeConfig(raw)
	return err
}

// New returns a udp backend for the section.
func (f Factory) New(raw json.RawMessage) (backend.Backend, error) {
	cfg, err := DecodeConfig(raw)
	if err != nil {
		return nil, err
	}
	switch {
	case f.Kernel == nil:
		return nil, errors.New("udp: no kernel")
	case f.Guard == nil:
		return nil, errors.New("udp: no encapsulation guard")
	case f.Routes == nil:
		return nil, errors.New("udp: no route writer")
	}
	return New(cfg, f.Kernel, f.Routes, f.Guard, f.Metrics, f.Status, f.Log), nil
}

// Cleanup removes what any udp backend could have left on the node: the
// device weft.udp (and with it every route out of it, whatever its
// protocol) and the guard's chains and set.
func (f Factory) Cleanup(ctx context.Context) error {
	return removeAll(ctx, f.Kernel, f.Guard, Config{Port: DefaultPort})
}

// Identity is the section's encapsulation identity (Config.Identity).
func (Factory) Identity(raw json.RawMessage) (string, error) {
	return backend.SectionIdentity(DecodeConfig, raw)
}

// SectionFor rebuilds a section receiving a udp identity (see
// backend.Receiver).
func (Factory) SectionFor(id string, _ json.RawMessage) (json.RawMessage, bool) {
	c, ok := ParseIdentity(id)
	if !ok {
		return nil, false
	}
	return json.RawMessage(fmt.Sprintf(`{"type":%q,"port":%d}`, Type, c.Port)), true
}
