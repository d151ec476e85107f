package bgp

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Type is the backend's name in net-conf.json and in weft.dev/backends.
const Type = "bgp"

// Defaults of the backend section.
const (
	DefaultASN                    = 64512
	DefaultPort                   = 179
	DefaultGracefulRestartSeconds = 120
	// DefaultClusterID is the route-reflector cluster ID every reflector
	// shares when routeReflectorClusterID is not set.
	DefaultClusterID = "244.0.0.1"
	// MaxGracefulRestartSeconds is the largest restart time the graceful
	// restart capability can carry (12 bits, RFC 4724).
	MaxGracefulRestartSeconds = 4095
)

// IPIPMode says when pod traffic to another node is carried in IP-in-IP.
type IPIPMode string

// The IPIP modes.
const (
	IPIPAlways      IPIPMode = "Always"
	IPIPCrossSubnet IPIPMode = "CrossSubnet"
	IPIPNever       IPIPMode = "Never"
)

// BackendConfig is the validated backend section of net-conf.json for type
// bgp.
type BackendConfig struct {
	ASN            uint32
	IPIPMode       IPIPMode
	NodeToNodeMesh bool
	// ClusterID is the route-reflector cluster ID all reflectors share.
	ClusterID netip.Addr
	Port      uint16
	// GracefulRestartSeconds is the restart time offered to peers; 0 turns
	// graceful restart off.
	GracefulRestartSeconds int
	Peers                  []ExternalPeer
}

// SecretRef names a key of a Secret in kube-system holding a TCP-MD5
// password. The bgp package never reads it: the caller resolves it.
type SecretRef struct {
	Name string `json:"name"`
	Key  string `json:"key"`
}

// ExternalPeer is a BGP router outside the cluster (a top-of-rack router).
type ExternalPeer struct {
	Addr        netip.Addr
	ASN         uint32
	PasswordRef *SecretRef
	// NodeSelector picks the nodes that peer with it (label equality);
	// empty selects every node.
	NodeSelector map[string]string
	// Accepted are the prefixes whose routes from this peer are installed
	// (a route must lie inside one of them); none by default.
	Accepted []netip.Prefix
}

type wireConfig struct {
	Type                    string     `json:"type"`
	ASNumber                *int64     `json:"asNumber"`
	IPIPMode                *string    `json:"ipipMode"`
	NodeToNodeMesh          *bool      `json:"nodeToNodeMesh"`
	RouteReflectorClusterID *string    `json:"routeReflectorClusterID"`
	Port                    *int64     `json:"port"`
	GracefulRestartSeconds  *int64     `json:"gracefulRestartSeconds"`
	Peers                   []wirePeer `json:"peers"`
}

type wirePeer struct {
	PeerIP            string            `json:"peerIP"`
	ASNumber          int64             `json:"asNumber"`
	PasswordSecretRef *SecretRef        `json:"passwordSecretRef"`
	NodeSelector      map[string]string `json:"nodeSelector"`
	AcceptedPrefixes  []string          `json:"acceptedPrefixes"`
}

// ConfigError is a validation error naming the offending field.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("bgp backend: %s: %s", e.Field, e.Reason)
}

func fieldErr(field, format string, args ...any) error {
	return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// DecodeConfig decodes and validates the backend section strictly: unknown
// fields and bad values are errors naming the field, and every field but
// type has a default, so {"type":"bgp"} is complete.
func DecodeConfig(raw json.RawMessage) (BackendConfig, error) {
	var w wireConfig
	if len(bytes.TrimSpace(raw)) > 0 {
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&w); err != nil {
			return BackendConfig{}, decodeErr(err)
		}
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			return BackendConfig{}, fieldErr("backend", "trailing data after the object")
		}
		if err := exactKeys(raw); err != nil {
			return BackendConfig{}, err
		}
	}
	if w.Type != Type {
		return BackendConfig{}, fieldErr("type", "%q is not %q", w.Type, Type)
	}
	c, err := w.globals()
	if err != nil {
		return BackendConfig{}, err
	}
	seen := map[netip.Addr]bool{}
	for i, wp := range w.Peers {
		p, err := wp.decode(fmt.Sprintf("peers[%d]", i))
		if err != nil {
			return BackendConfig{}, err
		}
		if seen[p.Addr] {
			return BackendConfig{}, fieldErr(fmt.Sprintf("peers[%d].peerIP", i), "%s is listed twice", p.Addr)
		}
		seen[p.Addr] = true
		c.Peers = append(c.Peers, p)
	}
	return c, nil
}

func decodeErr(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fieldErr(te.Field, "want %s, got %s", te.Type, te.Value)
	}
	msg := err.Error()
	if f, ok := strings.CutPrefix(msg, "json: unknown field "); ok {
		return fieldErr(strings.Trim(f, `"`), "unknown field")
	}
	return fieldErr("backend", "%v", err)
}

func (w wireConfig) globals() (BackendConfig, error) {
	c := BackendConfig{ASN: DefaultASN, IPIPMode: IPIPAlways, NodeToNodeMesh: true,
		ClusterID: netip.MustParseAddr(DefaultClusterID), Port: DefaultPort,
		GracefulRestartSeconds: DefaultGracefulRestartSeconds}
	if w.ASNumber != nil {
		asn, err := checkASN("asNumber", *w.ASNumber)
		if err != nil {
			return c, err
		}
		c.ASN = asn
	}
	if w.IPIPMode != nil {
		switch m := IPIPMode(*w.IPIPMode); m {
		case IPIPAlways, IPIPCrossSubnet, IPIPNever:
			c.IPIPMode = m
		default:
			return c, fieldErr("ipipMode", "%q: must be Always, CrossSubnet or Never", *w.IPIPMode)
		}
	}
	if w.NodeToNodeMesh != nil {
		c.NodeToNodeMesh = *w.NodeToNodeMesh
	}
	if w.RouteReflectorClusterID != nil {
		id, err := netip.ParseAddr(*w.RouteReflectorClusterID)
		if err != nil || !id.Is4() {
			return c, fieldErr("routeReflectorClusterID", "%q: must be a dotted IPv4-style ID", *w.RouteReflectorClusterID)
		}
		c.ClusterID = id
	}
	if w.Port != nil {
		if *w.Port < 1 || *w.Port > 65535 {
			return c, fieldErr("port", "%d: must be 1..65535", *w.Port)
		}
		c.Port = uint16(*w.Port)
	}
	if w.GracefulRestartSeconds != nil {
		s := *w.GracefulRestartSeconds
		if s < 0 || s > MaxGracefulRestartSeconds {
			return c, fieldErr("gracefulRestartSeconds", "%d: must be 0 (off) ..%d", s, MaxGracefulRestartSeconds)
		}
		c.GracefulRestartSeconds = int(s)
	}
	return c, nil
}

func checkASN(field string, v int64) (uint32, error) {
	if v < 1 || v > 1<<32-1 {
		return 0, fieldErr(field, "%d: must be 1..4294967295", v)
	}
	if v == 23456 {
		return 0, fieldErr(field, "23456 is AS_TRANS, not a usable AS number")
	}
	return uint32(v), nil
}

func (wp wirePeer) decode(at string) (ExternalPeer, error) {
	addr, err := netip.ParseAddr(wp.PeerIP)
	if err != nil || addr.Zone() != "" || addr.IsUnspecified() {
		return ExternalPeer{}, fieldErr(at+".peerIP", "%q: must be an IP address", wp.PeerIP)
	}
	asn, err := checkASN(at+".asNumber", wp.ASNumber)
	if err != nil {
		return ExternalPeer{}, err
	}
	p := ExternalPeer{Addr: addr, ASN: asn, NodeSelector: wp.NodeSelector}
	if r := wp.PasswordSecretRef; r != nil {
		if r.Name == "" || r.Key == "" {
			return ExternalPeer{}, fieldErr(at+".passwordSecretRef", "needs both name and key")
		}
		p.PasswordRef = r
	}
	for j, s := range wp.AcceptedPrefixes {
		pfx, err := netip.ParsePrefix(s)
		field := fmt.Sprintf("%s.acceptedPrefixes[%d]", at, j)
		if err != nil {
			return ExternalPeer{}, fieldErr(field, "%q: must be a CIDR prefix", s)
		}
		if pfx != pfx.Masked() {
			return ExternalPeer{}, fieldErr(field, "%q has host bits set (did you mean %s?)", s, pfx.Masked())
		}
		if pfx.Addr().Is4() != addr.Is4() {
			return ExternalPeer{}, fieldErr(field, "%q is not of the peer's address family", s)
		}
		p.Accepted = append(p.Accepted, pfx)
	}
	return p, nil
}

// Validator implements the config package's stage-two check for bgp.
type Validator struct{}

// ValidateConfig decodes raw as a bgp backend section.
func (Validator) ValidateConfig(raw json.RawMessage) error {
	_, err := DecodeConfig(raw)
	return err
}

// exactKeys rejects keys that differ from the field names only in case,
// which encoding/json would otherwise accept silently.
func exactKeys(raw json.RawMessage) error {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(raw, &top); err != nil {
		return fieldErr("backend", "%v", err)
	}
	if err := checkKeys(top, "", "type", "asNumber", "ipipMode", "nodeToNodeMesh",
		"routeReflectorClusterID", "port", "gracefulRestartSeconds", "peers"); err != nil {
		return err
	}
	var peers []map[string]json.RawMessage
	if len(top["peers"]) > 0 {
		if err := json.Unmarshal(top["peers"], &peers); err != nil {
			return fieldErr("peers", "%v", err)
		}
	}
	for i, p := range peers {
		at := fmt.Sprintf("peers[%d].", i)
		if err := checkKeys(p, at, "peerIP", "asNumber", "passwordSecretRef", "nodeSelector", "acceptedPrefixes"); err != nil {
			return err
		}
		var ref map[string]json.RawMessage
		if r := p["passwordSecretRef"]; len(r) > 0 && json.Unmarshal(r, &ref) == nil {
			if err := checkKeys(ref, at+"passwordSecretRef.", "name", "key"); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkKeys(m map[string]json.RawMessage, at string, allowed ...string) error {
	for k := range m {
		if !slices.Contains(allowed, k) {
			return fieldErr(at+k, "unknown field")
		}
	}
	return nil
}

// SpeakerConfig is the speaker configuration of local under c: router ID,
// listen address and next hop are the node's underlay address, the AS is
// the node's.
func (c BackendConfig) SpeakerConfig(local Node) Config {
	asn := local.ASN
	if asn == 0 {
		asn = c.ASN
	}
	return Config{RouterID: local.Addr, ASN: asn, ListenAddr: local.Addr, ListenPort: c.Port,
		NextHop: local.Addr, GracefulRestart: time.Duration(c.GracefulRestartSeconds) * time.Second}
}
