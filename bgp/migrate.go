package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"

	"github.com/weftnet/weft/internal/backend"
)

// Identities of the bgp backend: what is on the wire.
const (
	IdentityNative = Type + "/native" // ipipMode Never: plain routed
	IdentityIPIP   = Type + "/ipip"   // Always: IP-in-IP to every node
	IdentityCross  = Type + "/cross"  // CrossSubnet: IP-in-IP across subnets
)

// Identity is the section's encapsulation identity.
func (c BackendConfig) Identity() string {
	switch c.IPIPMode {
	case IPIPNever:
		return IdentityNative
	case IPIPCrossSubnet:
		return IdentityCross
	}
	return IdentityIPIP
}

func modeOf(id string) (IPIPMode, bool) {
	switch id {
	case IdentityNative:
		return IPIPNever, true
	case IdentityIPIP:
		return IPIPAlways, true
	case IdentityCross:
		return IPIPCrossSubnet, true
	}
	return "", false
}

// Identity implements backend.Identified: the ipipMode it sends with.
func (b *Backend) Identity() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.cfg.Identity()
}

// Decapsulates implements backend.Reconfigurer: the ipipMode it sends
// with and those it still receives from an in-place migration.
func (b *Backend) Decapsulates() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := []string{b.cfg.Identity()}
	for _, p := range slices.Backward(b.prev) {
		out = append(out, p.Identity())
	}
	return out
}

// Reconfigure implements backend.Reconfigurer: a change of ipipMode is a
// migration inside the one speaker. The IP-in-IP device is opened when the
// new mode needs it; each peer is routed with the new mode once it
// announces it, with the previous one until then (modeFor). A change of
// anything else is refused (the manager restarts the backend).
func (b *Backend) Reconfigure(ctx context.Context, raw json.RawMessage) (backend.Published, error) {
	cfg, err := DecodeConfig(raw)
	if err != nil {
		return backend.Published{}, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	same := cfg
	same.IPIPMode = b.cfg.IPIPMode
	if !b.up || !reflect.DeepEqual(same, b.cfg) {
		return backend.Published{}, errors.New("bgp: only ipipMode changes in place")
	}
	if cfg.IPIPMode != IPIPNever && b.tun == nil {
		if err := b.f.ipipAvailable(cfg.IPIPMode); err != nil {
			return backend.Published{}, err
		}
		t, err := b.f.IPIP.Start(b.life, b.local, b.local.UnderlayMTU-ipipOverhead)
		if err != nil {
			return backend.Published{}, fmt.Errorf("bgp: ipipMode %s: %w", cfg.IPIPMode, err)
		}
		b.tun, b.mtu = t, b.local.UnderlayMTU-ipipOverhead
		if b.peers != nil {
			// The guard before the peers: SetPeers is what brings a kernel
			// link up, and Never's Start removed the guard.
			if err := b.f.applyGuard(ctx, b.self.PodCIDRs, b.peers); err != nil {
				return b.published(), err
			}
			t.SetPeers(b.self.PodCIDRs, b.peers)
		}
	}
	b.prev = slices.DeleteFunc(b.prev, func(p BackendConfig) bool {
		return p.IPIPMode == cfg.IPIPMode || p.IPIPMode == b.cfg.IPIPMode
	})
	if cfg.IPIPMode != b.cfg.IPIPMode {
		b.prev = append(b.prev, b.cfg)
	}
	b.log.Info("bgp: migrating ipipMode in place", "from", b.cfg.IPIPMode, "to", cfg.IPIPMode)
	b.cfg = cfg
	return b.published(), nil
}

// Forget implements backend.Reconfigurer: no peer sends id any more. The
// IP-in-IP device and its guard go when no mode left needs them.
func (b *Backend) Forget(ctx context.Context, id string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.prev = slices.DeleteFunc(b.prev, func(p BackendConfig) bool { return p.Identity() == id })
	if b.tun == nil || b.needsTunnel() {
		return nil
	}
	b.log.Info("bgp: no peer sends IP-in-IP any more; removing it", "forgot", id)
	t := b.tun
	b.tun, b.mtu = nil, b.local.UnderlayMTU
	return b.f.closeIPIP(ctx, func() error { return t.Stop(true) })
}

func (b *Backend) needsTunnel() bool {
	if b.cfg.IPIPMode != IPIPNever {
		return true
	}
	return slices.ContainsFunc(b.prev, func(p BackendConfig) bool { return p.IPIPMode != IPIPNever })
}

// modeFor is the ipipMode to send to the node at nh with: the section's
// when it announces it, else the newest previous one it announces (a
// migration in progress), else the section's. b.mu is held.
func (b *Backend) modeFor(nh netip.Addr) IPIPMode {
	var p *backend.Peer
	for i := range b.peers {
		if b.peers[i].UnderlayIP == nh {
			p = &b.peers[i]
		}
	}
	if p == nil || p.Accepts(b.cfg.Identity()) {
		return b.cfg.IPIPMode
	}
	for _, c := range slices.Backward(b.prev) {
		if p.Accepts(c.Identity()) {
			return c.IPIPMode
		}
	}
	return b.cfg.IPIPMode
}

// Identity implements backend.Identifier.
func (*Factory) Identity(raw json.RawMessage) (string, error) {
	return backend.SectionIdentity(DecodeConfig, raw)
}

// SectionFor implements backend.Receiver: the current section with the
// ipipMode of id when it is a bgp section, else a default one.
func (*Factory) SectionFor(id string, current json.RawMessage) (json.RawMessage, bool) {
	mode, ok := modeOf(id)
	if !ok {
		return nil, false
	}
	sec := map[string]any{}
	if err := json.Unmarshal(current, &sec); err != nil || sec["type"] != Type {
		sec = map[string]any{"type": Type}
	}
	sec["ipipMode"] = string(mode)
	raw, err := json.Marshal(sec)
	return raw, err == nil
}
