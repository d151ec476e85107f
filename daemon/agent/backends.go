package agent

import (
	"encoding/json"
	"log/slog"

	"github.com/weftnet/weft/daemon/backend"
	"github.com/weftnet/weft/vxlan"
)

// VXLANFactory builds vxlan backends over one kernel.
type VXLANFactory struct {
	Kernel vxlan.Kernel
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
	return vxlan.New(cfg, f.Kernel, f.Log), nil
}
