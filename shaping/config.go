package shaping

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"time"
)

// Defaults of the bandwidth section.
const (
	DefaultCeiling     = 10_000_000_000 // bits/s per direction
	DefaultMaxBurst    = 64 << 10       // bytes
	DefaultTargetDelay = 5 * time.Millisecond
)

// Config is the bandwidth section of net-conf.json, validated.
type Config struct {
	// IngressCeiling and EgressCeiling are the node's totals per
	// direction (bits/s): the root class of each tree. A pod rate above
	// its direction's ceiling is refused.
	IngressCeiling, EgressCeiling uint64
	// PodCeil is the most a pod may reach by borrowing (bits/s); 0 means
	// the node ceiling. A pod's ceil is never below its rate.
	PodCeil uint64
	// MaxBurst bounds every class's burst (bytes), whatever the runtime
	// asks (containerd sends 4294967295 bits when the pod names none).
	MaxBurst uint64
	// TargetDelay sizes each pod's leaf queue: ceil × TargetDelay bytes.
	TargetDelay time.Duration
}

// DefaultConfig is the section {} decodes to.
func DefaultConfig() Config {
	return Config{IngressCeiling: DefaultCeiling, EgressCeiling: DefaultCeiling,
		MaxBurst: DefaultMaxBurst, TargetDelay: DefaultTargetDelay}
}

type wireConfig struct {
	IngressCeiling *string `json:"ingressCeiling"`
	EgressCeiling  *string `json:"egressCeiling"`
	PodCeil        *string `json:"podCeil"`
	MaxBurst       *string `json:"maxBurst"`
	TargetDelay    *string `json:"targetDelay"`
}

// ParseConfig decodes the bandwidth section strictly; errors name the
// field ("bandwidth.podCeil: ...").
func ParseConfig(raw []byte) (Config, error) {
	c := DefaultConfig()
	if err := exactKeys(raw); err != nil {
		return c, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var w wireConfig
	if err := dec.Decode(&w); err != nil {
		return c, fmt.Errorf("bandwidth: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return c, errors.New("bandwidth: trailing data after the object")
	}
	for _, f := range []struct {
		name string
		v    *string
		dst  *uint64
	}{
		{"ingressCeiling", w.IngressCeiling, &c.IngressCeiling},
		{"egressCeiling", w.EgressCeiling, &c.EgressCeiling},
		{"podCeil", w.PodCeil, &c.PodCeil},
		{"maxBurst", w.MaxBurst, &c.MaxBurst},
	} {
		if f.v == nil {
			continue
		}
		n, err := ParseQuantity(*f.v)
		if err != nil {
			return c, fmt.Errorf("bandwidth.%s: %w", f.name, err)
		}
		*f.dst = n
	}
	if w.TargetDelay != nil {
		d, err := time.ParseDuration(*w.TargetDelay)
		if err != nil || d < 100*time.Microsecond || d > time.Second {
			return c, fmt.Errorf("bandwidth.targetDelay %q: a duration between 100us and 1s", *w.TargetDelay)
		}
		c.TargetDelay = d
	}
	if c.MaxBurst < minBurst {
		return c, fmt.Errorf("bandwidth.maxBurst %d: at least %d bytes (two full frames)", c.MaxBurst, minBurst)
	}
	for _, ceil := range []uint64{c.IngressCeiling, c.EgressCeiling} {
		if c.PodCeil > ceil {
			return c, fmt.Errorf("bandwidth.podCeil %s: above a node ceiling (%s)", FormatBits(c.PodCeil), FormatBits(ceil))
		}
	}
	return c, nil
}

// exactKeys refuses keys that differ from a field only in case, which
// encoding/json would accept.
func exactKeys(raw []byte) error {
	var m map[string]json.RawMessage
	if json.Unmarshal(raw, &m) != nil {
		return nil // the strict decode reports it
	}
	known := []string{"ingressCeiling", "egressCeiling", "podCeil", "maxBurst", "targetDelay"}
	for k := range m {
		if !slices.Contains(known, k) {
			return fmt.Errorf("bandwidth: unknown field %q (known: %v)", k, known)
		}
	}
	return nil
}
