package vxlan

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

// Factory builds vxlan backends over one kernel, each writing its routes
// through Routes (the node's one route writer, shared with the other
// backends so a switch hands each destination over by one replace) and
// guarding its port with Guard (required: weft never opens the port
// unguarded). It implements backend.Factory.
type Factory struct {
	Kernel Kernel
	Routes route.Writer
	Guard  encapguard.Guard
	Log    *slog.Logger
}

// Type returns "vxlan".
func (Factory) Type() string { return Type }

// ValidateConfig decodes the section strictly.
func (Factory) ValidateConfig(raw json.RawMessage) error {
	_, err := DecodeConfig(raw)
	return err
}

// New returns a vxlan backend for the section.
func (f Factory) New(raw json.RawMessage) (backend.Backend, error) {
	cfg, err := DecodeConfig(raw)
	if err != nil {
		return nil, err
	}
	if f.Guard == nil {
		return nil, errors.New("vxlan: no encapsulation guard")
	}
	if f.Routes == nil {
		return nil, errors.New("vxlan: no route writer")
	}
	return New(cfg, f.Kernel, f.Routes, f.Guard, f.Log), nil
}

// Cleanup removes what the default vxlan backend could have left on the
// node: the device weft.vxlan (and with it its FDB, neighbours and every
// route out of it, whatever its protocol) and the guard's chains and set.
// Devices of other identities (weft.vx<vni>.<port>) go with the leftovers
// sweep of uninstall (every weft.* link).
func (f Factory) Cleanup(ctx context.Context) error {
	return removeAll(ctx, f.Kernel, f.Guard, Config{VNI: DefaultVNI, Port: DefaultPort})
}

// Identity is the section's encapsulation identity (Config.Identity).
func (Factory) Identity(raw json.RawMessage) (string, error) {
	return backend.SectionIdentity(DecodeConfig, raw)
}

// SectionFor rebuilds a section receiving a vxlan identity (see
// backend.Receiver).
func (Factory) SectionFor(id string, _ json.RawMessage) (json.RawMessage, bool) {
	c, ok := ParseIdentity(id)
	if !ok {
		return nil, false
	}
	return json.RawMessage(fmt.Sprintf(`{"type":%q,"vni":%d,"port":%d}`, Type, c.VNI, c.Port)), true
}
