// Package config decodes and validates weftd's network configuration, the
// key net-conf.json of the ConfigMap weft in kube-system.
//
// Decoding has two stages. Parse decodes and validates the generic fields
// and keeps the backend section raw; the chosen backend then decodes its
// own typed configuration from Backend.Raw (see BackendValidator). A
// configuration is used only when both stages pass, so an invalid one is
// never half-applied.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
)

// ConfigMap coordinates.
const (
	Namespace = "kube-system"
	Name      = "weft"
	Key       = "net-conf.json"
)

// Defaults.
const (
	DefaultSubnetLen  = 24
	DefaultCNIVersion = "1.0.0"
)

// CNIVersions returns the cniVersion values the conflist may carry. 1.0.0
// is the default: containerd 1.6 fails a pod whose chain returns a 1.1.0
// result, while containerd 1.7/2.x and CRI-O accept 1.1.0.
func CNIVersions() []string { return []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} }

// NetConf is the validated generic part of net-conf.json.
type NetConf struct {
	Network    netip.Prefix
	SubnetLen  int
	MTU        int
	CNIVersion string
	Backend    Backend
	// Bandwidth is the bandwidth section, raw for the shaper's own decoder
	// (shaping.ParseConfig); nil when absent (weftd does not shape).
	Bandwidth json.RawMessage
}

// Backend is the backend section: its type, and the whole section raw for
// the backend's own decoder.
type Backend struct {
	Type string
	Raw  json.RawMessage
}

// Error is a validation error naming the offending field.
type Error struct {
	Field  string
	Reason string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return "net-conf.json: " + e.Reason
	}
	return fmt.Sprintf("net-conf.json: %s: %s", e.Field, e.Reason)
}

func fieldErr(field, format string, args ...any) error {
	return &Error{Field: field, Reason: fmt.Sprintf(format, args...)}
}

type wire struct {
	Network    *string         `json:"network"`
	SubnetLen  *int            `json:"subnetLen"`
	MTU        *int            `json:"mtu"`
	CNIVersion *string         `json:"cniVersion"`
	Backend    json.RawMessage `json:"backend"`
	Bandwidth  json.RawMessage `json:"bandwidth"`
}

// Parse decodes the generic fields of net-conf.json strictly (unknown keys
// are errors) and validates each of them. The backend section is checked
// only for its type; its other keys are for the backend's decoder.
func Parse(data []byte) (*NetConf, error) {
	if len(bytes.TrimSpace(data)) == 0 {
		return nil, &Error{Reason: "empty"}
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var w wire
	if err := dec.Decode(&w); err != nil {
		return nil, &Error{Reason: "invalid JSON: " + err.Error()}
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, &Error{Reason: "invalid JSON: trailing data after the object"}
	}
	nc := &NetConf{SubnetLen: DefaultSubnetLen, CNIVersion: DefaultCNIVersion}
	if w.Network == nil {
		return nil, fieldErr("network", "required")
	}
	p, err := netip.ParsePrefix(*w.Network)
	if err != nil {
		return nil, fieldErr("network", "not a CIDR: %q", *w.Network)
	}
	if !p.Addr().Is4() {
		return nil, fieldErr("network", "%s: only IPv4 networks are supported", p)
	}
	if p != p.Masked() {
		return nil, fieldErr("network", "%s has host bits set (did you mean %s?)", p, p.Masked())
	}
	if p.Bits() < 8 || p.Bits() > 28 {
		return nil, fieldErr("network", "%s: prefix length must be between 8 and 28", p)
	}
	if p.Addr().IsLoopback() || p.Addr().IsMulticast() || p.Addr().IsLinkLocalUnicast() || p.Addr().IsUnspecified() {
		return nil, fieldErr("network", "%s: not a unicast range usable for pods", p)
	}
	nc.Network = p
	if w.SubnetLen != nil {
		nc.SubnetLen = *w.SubnetLen
	}
	if nc.SubnetLen <= p.Bits() || nc.SubnetLen > 30 {
		return nil, fieldErr("subnetLen", "%d: must be longer than the network's /%d and at most 30", nc.SubnetLen, p.Bits())
	}
	if nc.SubnetLen-p.Bits() > 16 {
		return nil, fieldErr("subnetLen", "%d: more than 65536 subnets in /%d", nc.SubnetLen, p.Bits())
	}
	if w.MTU != nil {
		nc.MTU = *w.MTU
	}
	if nc.MTU != 0 && (nc.MTU < 576 || nc.MTU > 65535) {
		return nil, fieldErr("mtu", "%d: must be 0 (derive from the underlay) or 576..65535", nc.MTU)
	}
	if w.CNIVersion != nil {
		nc.CNIVersion = *w.CNIVersion
	}
	if !slices.Contains(CNIVersions(), nc.CNIVersion) {
		return nil, fieldErr("cniVersion", "%q: must be one of %v", nc.CNIVersion, CNIVersions())
	}
	b, err := parseBackend(w.Backend)
	if err != nil {
		return nil, err
	}
	nc.Backend = b
	if len(w.Bandwidth) > 0 && string(w.Bandwidth) != "null" {
		nc.Bandwidth = w.Bandwidth
	}
	return nc, nil
}

func parseBackend(raw json.RawMessage) (Backend, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return Backend{}, fieldErr("backend", "required (e.g. {\"type\": \"vxlan\"})")
	}
	var head struct {
		Type *string `json:"type"`
	}
	if err := json.Unmarshal(raw, &head); err != nil {
		return Backend{}, fieldErr("backend", "must be an object: %v", err)
	}
	if head.Type == nil || *head.Type == "" {
		return Backend{}, fieldErr("backend.type", "required")
	}
	return Backend{Type: *head.Type, Raw: raw}, nil
}

// BackendValidator decodes and validates a backend's typed configuration
// (stage two). The backend manager supplies one per known backend type.
type BackendValidator interface {
	ValidateConfig(raw json.RawMessage) error
}

// Environment is what the node knows that a configuration must not clash
// with: the underlay addresses of the nodes and a pod CIDR assigned by the
// controller-manager.
type Environment struct {
	NodeIPs []netip.Addr
	// NodePodCIDR is this node's spec.podCIDR, if set.
	NodePodCIDR netip.Prefix
}

// Validate runs both stages' remaining checks: the backend type must be one
// of backends and its section must decode; the network must not contain a
// node's underlay address; a pod CIDR assigned by Kubernetes must lie
// inside the network.
func (nc *NetConf) Validate(backends map[string]BackendValidator, env Environment) error {
	v, ok := backends[nc.Backend.Type]
	if !ok {
		known := make([]string, 0, len(backends))
		for k := range backends {
			known = append(known, k)
		}
		slices.Sort(known)
		return fieldErr("backend.type", "unknown backend %q (known: %v)", nc.Backend.Type, known)
	}
	if err := v.ValidateConfig(nc.Backend.Raw); err != nil {
		return fieldErr("backend", "%s: %v", nc.Backend.Type, err)
	}
	for _, ip := range env.NodeIPs {
		if nc.Network.Contains(ip) {
			return fieldErr("network", "%s overlaps the node network (node address %s)", nc.Network, ip)
		}
	}
	if c := env.NodePodCIDR; c.IsValid() && c.Addr().Is4() {
		if !nc.Network.Contains(c.Addr()) || c.Bits() < nc.Network.Bits() {
			return fieldErr("network", "%s does not contain the node's spec.podCIDR %s (set network to the controller-manager's --cluster-cidr)", nc.Network, c)
		}
	}
	return nil
}

// Equal reports whether two configurations are the same.
func (nc *NetConf) Equal(o *NetConf) bool {
	if nc == nil || o == nil {
		return nc == o
	}
	return nc.Network == o.Network && nc.SubnetLen == o.SubnetLen && nc.MTU == o.MTU &&
		nc.CNIVersion == o.CNIVersion && nc.Backend.Type == o.Backend.Type &&
		SameJSON(nc.Backend.Raw, o.Backend.Raw) && (nc.Bandwidth == nil) == (o.Bandwidth == nil) &&
		(nc.Bandwidth == nil || SameJSON(nc.Bandwidth, o.Bandwidth))
}

// SameJSON reports whether a and b are the same JSON value (key order and
// white space aside); invalid JSON is compared byte for byte.
func SameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return bytes.Equal(a, b)
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}
