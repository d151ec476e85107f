// Package vxlan is weft's kernel VXLAN backend: one device weft.vxlan per
// node, and for every remote node an FDB entry (its VTEP MAC -> its underlay
// address), a permanent neighbour entry (its subnet's network address -> its
// VTEP MAC) and an onlink route to its pod subnet through that address.
//
// The backend is declarative: Desired computes the whole wanted state from
// the peers (pure), and Apply converges the kernel to it, touching only
// entries on its own device; its routes (owner "vxlan") go through the
// node's route writer (internal/route), which marks them with Weft's route
// protocol. Apply re-reads the kernel every time, so the
// periodic resync that calls it repairs anything deleted by hand. Start
// adopts an existing device and its entries (the VTEP MAC survives a weftd
// restart); nothing is flushed on start.
package vxlan

import (
	"encoding/json"
	"fmt"

	"github.com/weftnet/weft/internal/backend"
)

// Type is the backend's name in net-conf.json and in weft.dev/backends.
const Type = "vxlan"

// Defaults.
const (
	DefaultDevice = "weft.vxlan"
	DefaultVNI    = 1
	DefaultPort   = 8472
	// Overhead is what VXLAN over IPv4 adds to every packet.
	Overhead = 50
)

// AnnoVTEPMAC is the Node annotation carrying the node's VTEP MAC.
const AnnoVTEPMAC = "weft.dev/vxlan-vtep-mac"

// Config is the backend section of net-conf.json for type vxlan.
type Config struct {
	VNI  int `json:"vni"`
	Port int `json:"port"`
	// MTU of the device; 0 = underlay MTU - 50.
	MTU int `json:"mtu"`
}

// DecodeConfig decodes and validates the backend section strictly.
func DecodeConfig(raw json.RawMessage) (Config, error) {
	var w struct {
		Type string `json:"type"`
		Config
	}
	w.VNI, w.Port = DefaultVNI, DefaultPort
	if err := backend.DecodeSection(raw, Type, &w, &w.Type); err != nil {
		return Config{}, err
	}
	c := w.Config
	if c.VNI < 1 || c.VNI > 1<<24-1 {
		return Config{}, fmt.Errorf("vni %d: must be 1..16777215", c.VNI)
	}
	if c.Port < 1 || c.Port > 65535 {
		return Config{}, fmt.Errorf("port %d: must be 1..65535", c.Port)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65485) {
		return Config{}, fmt.Errorf("mtu %d: must be 0 (underlay - 50) or 576..65485", c.MTU)
	}
	return c, nil
}

// Validator implements the config package's stage-two check for vxlan.
type Validator struct{}

// ValidateConfig decodes raw as a vxlan backend section.
func (Validator) ValidateConfig(raw json.RawMessage) error {
	_, err := DecodeConfig(raw)
	return err
}
