package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/weftnet/weft/internal/backend"
)

// State is the complete set of per-peer kernel entries the backend owns.
type State struct {
	// FDB maps a peer VTEP MAC (lower-case, colon form) to its underlay IP.
	FDB map[string]netip.Addr
	// Neigh maps a peer subnet's network address to the peer VTEP MAC.
	Neigh map[netip.Addr]string
	// Routes maps a peer pod subnet to its gateway (the subnet's network
	// address), installed via the device with the onlink flag.
	Routes map[netip.Prefix]netip.Addr
}

// Problem explains why (part of) a peer was left out.
type Problem struct {
	Peer   string
	Reason string
}

func (p Problem) String() string { return p.Peer + ": " + p.Reason }

// Desired computes the wanted entries for reaching peers from local. It is
// pure. Peers are taken in name order, so when two peers claim the same
// subnet or VTEP MAC the result is deterministic (the first keeps it) and
// the conflict is reported.
func Desired(local backend.LocalNode, peers []backend.Peer) (State, []Problem) {
	return DesiredFor(Config{VNI: DefaultVNI, Port: DefaultPort}, local, peers)
}

// DesiredFor is Desired for the section cfg: peers that accept its
// identity, their VTEP MAC under its annotation.
func DesiredFor(cfg Config, local backend.LocalNode, peers []backend.Peer) (State, []Problem) {
	id, anno := cfg.Identity(), cfg.MACAnnotation()
	st := State{FDB: map[string]netip.Addr{}, Neigh: map[netip.Addr]string{}, Routes: map[netip.Prefix]netip.Addr{}}
	var probs []Problem
	sorted := slices.Clone(peers)
	slices.SortFunc(sorted, func(a, b backend.Peer) int { return strings.Compare(a.Name, b.Name) })
	owner := map[netip.Prefix]string{}
	macOwner := map[string]string{}
	for _, p := range sorted {
		if p.Name == local.Name {
			continue
		}
		bad := func(format string, args ...any) {
			probs = append(probs, Problem{Peer: p.Name, Reason: fmt.Sprintf(format, args...)})
		}
		if !p.Accepts(id) {
			bad("does not decapsulate %s (backends %v)", id, p.Backends)
			continue
		}
		hw, err := net.ParseMAC(p.Attrs[anno])
		if err != nil || len(hw) != 6 {
			bad("invalid or missing %s %q", anno, p.Attrs[anno])
			continue
		}
		mac := hw.String()
		if !p.UnderlayIP.IsValid() || !p.UnderlayIP.Is4() || p.UnderlayIP.IsUnspecified() {
			bad("invalid underlay IP %v", p.UnderlayIP)
			continue
		}
		if p.UnderlayIP == local.UnderlayIP {
			bad("underlay IP %s is this node's", p.UnderlayIP)
			continue
		}
		if o, dup := macOwner[mac]; dup {
			bad("VTEP MAC %s already used by %s", mac, o)
			continue
		}
		var cidrs []netip.Prefix
		for _, c := range p.PodCIDRs {
			c = c.Masked()
			switch {
			case !c.Addr().Is4():
				continue // IPv6 pod subnets are not carried by this backend yet
			case local.Network.IsValid() && (!local.Network.Contains(c.Addr()) || c.Bits() < local.Network.Bits()):
				bad("pod CIDR %s outside the cluster network %s", c, local.Network)
			case local.PodCIDR.IsValid() && c.Overlaps(local.PodCIDR):
				bad("pod CIDR %s overlaps this node's %s", c, local.PodCIDR)
			case c.Bits() > 30:
				bad("pod CIDR %s too small", c)
			default:
				if o := overlapOwner(owner, c); o != "" {
					bad("pod CIDR %s overlaps %s's", c, o)
					continue
				}
				cidrs = append(cidrs, c)
			}
		}
		if len(cidrs) == 0 {
			if len(p.PodCIDRs) == 0 {
				bad("no pod CIDR yet")
			}
			continue
		}
		macOwner[mac] = p.Name
		st.FDB[mac] = p.UnderlayIP
		for _, c := range cidrs {
			owner[c] = p.Name
			gw := c.Addr()
			st.Neigh[gw] = mac
			st.Routes[c] = gw
		}
	}
	return st, probs
}

func overlapOwner(owner map[netip.Prefix]string, c netip.Prefix) string {
	for o, name := range owner {
		if o.Overlaps(c) {
			return name
		}
	}
	return ""
}

// admitted is the state whose senders the guard admits: the peers
// Desired programs, and those that do not announce this identity yet, as
// if they did (a peer moves to sending it as soon as it sees this node
// announce it, maybe before this node has seen the peer announce it
// back), with the same checks of addresses and pod CIDRs. A peer that
// announces it with a broken MAC stays out.
func admitted(cfg Config, local backend.LocalNode, peers []backend.Peer) State {
	all := make([]backend.Peer, 0, len(peers))
	for i, p := range peers {
		if !p.Accepts(cfg.Identity()) {
			p.Backends = []string{cfg.Identity()}
			p.Attrs = map[string]string{cfg.MACAnnotation(): fmt.Sprintf("02:00:00:00:%02x:%02x", i>>8&0xff, i&0xff)}
		}
		all = append(all, p)
	}
	st, _ := DesiredFor(cfg, local, all)
	return st
}
