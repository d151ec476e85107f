// Package podnet is the logic of the weft CNI plugin: it wires a pod into
// the node bridge with a veth pair, configures the addresses and routes an
// IPAM plugin hands out, and undoes all of it on DEL and GC.
package podnet

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/internal/names"
)

// DefaultBridge is the node bridge used when the config names none.
const DefaultBridge = names.Bridge

// NetConf is the weft plugin's network configuration. Keys that mean the
// same as in the reference bridge plugin carry the same names, so a config
// switches between the two by changing "type".
type NetConf struct {
	types.PluginConf
	Bridge           string `json:"bridge"`
	MTU              int    `json:"mtu"`
	HairpinMode      *bool  `json:"hairpinMode"`
	IPMasq           bool   `json:"ipMasq"`
	IsGateway        *bool  `json:"isGateway"`
	IsDefaultGateway bool   `json:"isDefaultGateway"`
	// SubnetFile is the node subnet file whose mtu is used when MTU is 0
	// (default: ipam.subnetFile, else subnetfile.DefaultPath; a missing
	// file is not an error).
	SubnetFile string `json:"subnetFile"`
	// EndpointDir, when set, receives one record per attachment for
	// weftd's policy controller (internal/endpoint); weftd's conflist sets
	// it to /run/weft/endpoints.
	EndpointDir string `json:"endpointDir"`
	// PolicySocket, when set with EndpointDir, is weftd's local socket:
	// ADD returns only once weftd has the pod's policy rules in place
	// (isolation before start), waiting at most PolicyTimeout (default
	// 10s); otherwise ADD fails with "try again later" and is undone.
	PolicySocket  string `json:"policySocket"`
	PolicyTimeout string `json:"policyTimeout"`
	// ShapingSocket, when set with EndpointDir, is weftd's local socket
	// for pod bandwidth: the plugin declares the bandwidth and
	// pod-annotations capabilities (weftd's conflist), records what the
	// runtime asked, and ADD returns once weftd has the pod's classes in
	// place; a request weftd refuses fails ADD naming the annotation.
	ShapingSocket string        `json:"shapingSocket"`
	RuntimeConfig runtimeConfig `json:"runtimeConfig"`
	// Vlan exists only to reject a reference bridge config that relies on
	// VLAN tagging, which weft does not do.
	Vlan int `json:"vlan"`
	// LegacyAttachments is the GC key older libcni sent instead of (or
	// besides) cni.dev/valid-attachments.
	LegacyAttachments []types.GCAttachment `json:"cni.dev/attachments"`
	// gcListed: either GC key is present, even as null (libcni sends null
	// when no attachment is left).
	gcListed bool
}

// GCAttachments returns the attachments GC must keep (both keys' lists),
// and false when the config carries neither GC key (then nothing may be
// collected). A key present as null is an empty list, as weft-ipam reads
// it: both halves of GC must agree on what is left.
func (c *NetConf) GCAttachments() ([]types.GCAttachment, bool) {
	return append(append([]types.GCAttachment(nil), c.ValidAttachments...), c.LegacyAttachments...), c.gcListed
}

// Hairpin reports whether hairpin mode is on (default true).
func (c *NetConf) Hairpin() bool { return c.HairpinMode == nil || *c.HairpinMode }

// Gateway reports whether the bridge holds the gateway addresses (default
// true; isDefaultGateway implies it).
func (c *NetConf) Gateway() bool {
	return c.IsDefaultGateway || c.IsGateway == nil || *c.IsGateway
}

// LoadConf decodes and validates the plugin config. Errors are *types.Error
// with the spec's code and name the offending field.
func LoadConf(data []byte) (*NetConf, error) {
	c := &NetConf{}
	if err := json.Unmarshal(data, c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field != "" {
			return nil, types.NewError(types.ErrDecodingFailure,
				fmt.Sprintf("%s: expected %s, got JSON %s", te.Field, te.Type, te.Value), "")
		}
		return nil, types.NewError(types.ErrDecodingFailure, "decode network config: "+err.Error(), "")
	}
	var gcKeys struct {
		Valid  json.RawMessage `json:"cni.dev/valid-attachments"`
		Legacy json.RawMessage `json:"cni.dev/attachments"`
	}
	if json.Unmarshal(data, &gcKeys) == nil {
		c.gcListed = gcKeys.Valid != nil || gcKeys.Legacy != nil
	}
	if c.RawPrevResult != nil {
		if err := version.ParsePrevResult(&c.PluginConf); err != nil {
			return nil, types.NewError(types.ErrDecodingFailure, "prevResult: "+err.Error(), "")
		}
	}
	if c.Bridge == "" {
		c.Bridge = DefaultBridge
	}
	if c.SubnetFile == "" {
		var aux struct {
			IPAM struct {
				SubnetFile string `json:"subnetFile"`
			} `json:"ipam"`
		}
		if json.Unmarshal(data, &aux) == nil {
			c.SubnetFile = aux.IPAM.SubnetFile
		}
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *NetConf) validate() error {
	invalid := func(format string, a ...any) error {
		return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, a...), "")
	}
	if err := validIfName(c.Bridge); err != nil {
		return invalid("bridge %q: %v", c.Bridge, err)
	}
	if strings.HasPrefix(c.Bridge, HostVethPrefix) {
		return invalid("bridge %q: the prefix %q is reserved for weft's host veths", c.Bridge, HostVethPrefix)
	}
	if c.MTU != 0 && (c.MTU < 68 || c.MTU > 65535) {
		return invalid("mtu %d: must be 0 (automatic) or 68..65535", c.MTU)
	}
	if c.IPAM.Type == "" {
		return invalid("ipam.type: missing")
	}
	if strings.ContainsAny(c.IPAM.Type, "/\\") || c.IPAM.Type == "." || c.IPAM.Type == ".." {
		return invalid("ipam.type %q: must be a plugin name, not a path", c.IPAM.Type)
	}
	if c.PolicySocket != "" && c.EndpointDir == "" {
		return invalid("policySocket: needs endpointDir (weftd finds the pod by its record)")
	}
	if c.ShapingSocket != "" && c.EndpointDir == "" {
		return invalid("shapingSocket: needs endpointDir (weftd reads the request from the record)")
	}
	if c.PolicyTimeout != "" {
		if d, err := time.ParseDuration(c.PolicyTimeout); err != nil || d <= 0 {
			return invalid("policyTimeout %q: must be a positive duration such as \"10s\"", c.PolicyTimeout)
		}
	}
	if c.Vlan != 0 {
		return types.NewError(types.ErrUnsupportedField, fmt.Sprintf("vlan %d: not supported by weft", c.Vlan), "")
	}
	if c.IsGateway != nil && !*c.IsGateway && c.IsDefaultGateway {
		return invalid("isDefaultGateway: needs isGateway (it is false)")
	}
	return nil
}

// validIfName checks a Linux interface name.
func validIfName(n string) error {
	switch {
	case n == "":
		return errors.New("empty")
	case len(n) > 15:
		return errors.New("longer than 15 bytes")
	case n == "." || n == "..":
		return errors.New("not a valid interface name")
	case strings.ContainsAny(n, "/: \t\n"):
		return errors.New("contains '/', ':' or whitespace")
	}
	return nil
}
