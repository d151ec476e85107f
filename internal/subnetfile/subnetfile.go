// Package subnetfile defines the node subnet file: the contract between
// weftd, which writes it once it holds this node's pod subnet lease, and the
// weft-ipam plugin, which allocates pod addresses from it.
//
// The default path is /run/weft/subnet.json. The format is JSON:
//
//	{
//	  "network": "10.244.0.0/16",   // the whole cluster pod network
//	  "subnet":  "10.244.1.0/24",   // this node's pod subnet
//	  "mtu":     1450               // pod MTU the backend can carry (0 = unset)
//	}
//
// The gateway is the first host address of the subnet; it lives on the
// node bridge. Extra IPv6 subnets may be given in "subnets6" later without
// breaking readers.
package subnetfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/weftnet/weft/internal/atomicfile"
)

// DefaultPath is where weftd writes the node subnet file.
const DefaultPath = "/run/weft/subnet.json"

// File is the decoded node subnet file.
type File struct {
	Network netip.Prefix `json:"network"`
	Subnet  netip.Prefix `json:"subnet"`
	MTU     int          `json:"mtu,omitempty"`
}

// Gateway returns the gateway address of the node subnet: its first host
// address, which weft puts on the bridge.
func (f *File) Gateway() netip.Addr {
	return f.Subnet.Masked().Addr().Next()
}

// Validate checks that the file describes a usable subnet.
func (f *File) Validate() error {
	if !f.Subnet.IsValid() {
		return errors.New("subnet: missing or invalid")
	}
	if f.Subnet != f.Subnet.Masked() {
		return fmt.Errorf("subnet %s: host bits set", f.Subnet)
	}
	if f.Subnet.Addr().Is4() && f.Subnet.Bits() > 30 {
		return fmt.Errorf("subnet %s: too small for pods", f.Subnet)
	}
	if f.Network.IsValid() {
		if f.Network.Bits() > f.Subnet.Bits() || !f.Network.Contains(f.Subnet.Addr()) {
			return fmt.Errorf("subnet %s is not inside network %s", f.Subnet, f.Network)
		}
	}
	if f.MTU < 0 || (f.MTU > 0 && f.MTU < 576) || f.MTU > 65535 {
		return fmt.Errorf("mtu %d: out of range", f.MTU)
	}
	return nil
}

// Read loads and validates the subnet file at path. A missing file returns
// an error wrapping fs.ErrNotExist.
func Read(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read subnet file: %w", err)
	}
	var f File
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decode subnet file %s: %w", path, err)
	}
	if err := f.Validate(); err != nil {
		return nil, fmt.Errorf("subnet file %s: %w", path, err)
	}
	return &f, nil
}

// Write validates f and replaces the file at path atomically (internal/atomicfile).
func Write(path string, f *File) error {
	if err := f.Validate(); err != nil {
		return err
	}
	data, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create subnet file dir: %w", err)
	}
	if err := atomicfile.Write(path, append(data, '\n'), 0o644); err != nil {
		return fmt.Errorf("write subnet file: %w", err)
	}
	return nil
}
