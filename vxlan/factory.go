package vxlan

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
)

// Factory builds vxlan backends over one kernel, each guarding its port
// with Guard (required: weft never opens the port unguarded). It
// implements backend.Factory.
type Factory struct {
	Kernel Kernel
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
	return New(cfg, f.Kernel, f.Guard, f.Log), nil
}

// Cleanup removes what any vxlan backend could have left on the node: the
// device weft.vxlan (and with it its FDB, neighbours and routes) and the
// guard's chains and set.
func (f Factory) Cleanup(ctx context.Context) error {
	var errs []error
	if f.Kernel != nil {
		if err := f.Kernel.DeleteDevice(DefaultDevice); err != nil {
			errs = append(errs, fmt.Errorf("vxlan: %w", err))
		}
	}
	if f.Guard != nil {
		if err := f.Guard.Remove(ctx, Type); err != nil {
			errs = append(errs, fmt.Errorf("vxlan: %w", err))
		}
	}
	return errors.Join(errs...)
}
