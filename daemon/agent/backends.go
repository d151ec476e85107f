package agent

import (
	"encoding/json"
	"errors"
	"log/slog"

	"github.com/weftnet/weft/daemon/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/vxlan"
)

// VXLANFactory builds vxlan backends over one kernel, each guarding its
// port with Guard (required: weft never opens the port unguarded).
type VXLANFactory struct {
	Kernel vxlan.Kernel
	Guard  encapguard.Guard
	Log    *slog.Logger
}

// Type returns "vxlan".
func (VXLANFactory) Type() string { return vxlan.Type }

// ValidateConfig decodes the section strictly.
func (VXLANFactory) ValidateConfig(raw json.RawMessage) error {
	_, err := vxlan.DecodeConfig(raw)
	return err
}

// New returns a vxlan backend for the section.
func (f VXLANFactory) New(raw json.RawMessage) (backend.Backend, error) {
	cfg, err := vxlan.DecodeConfig(raw)
	if err != nil {
		return nil, err
	}
	if f.Guard == nil {
		return nil, errors.New("vxlan: no encapsulation guard")
	}
	return vxlan.New(cfg, f.Kernel, f.Guard, f.Log), nil
}
