package bgp

import (
	"net/netip"
	"slices"
)

// ImportPolicy decides which learned paths may be installed. It is pure
// data; Accept is a pure function of it.
type ImportPolicy struct {
	// Local is this node's address: its own pod CIDRs are never learned.
	Local netip.Addr
	// Owners maps every cluster pod CIDR to the address of the node that
	// owns it.
	Owners map[netip.Prefix]netip.Addr
	// Cluster is the set of cluster node addresses (any of them may send a
	// path, directly or as a route reflector).
	Cluster map[netip.Addr]bool
	// External maps an external peer's address to its acceptedPrefixes.
	External map[netip.Addr][]netip.Prefix
}

// Candidate is one path a peer sent.
type Candidate struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	// From is the address of the neighbor the path was learned from.
	From netip.Addr
}

// Reasons a candidate is rejected.
const (
	RejectUnknownPeer    = "unknown-peer"
	RejectNotPodCIDR     = "not-a-pod-cidr"
	RejectWrongNextHop   = "next-hop-not-owner"
	RejectOwnCIDR        = "own-pod-cidr"
	RejectNotAccepted    = "outside-accepted-prefixes"
	RejectInsidePodCIDR  = "inside-a-pod-cidr"
	RejectInvalidNextHop = "invalid-next-hop"
)

// Accept reports whether the path may be installed and, if not, why.
//
// From a cluster node (a mesh peer or a route reflector) only an exact pod
// CIDR is accepted, and only with the next hop of the node that owns it,
// so no node can inject a default route, a foreign prefix or another
// node's CIDR, and a reflector cannot redirect one. From an external peer
// only prefixes inside its acceptedPrefixes are accepted (none by default),
// and never one equal to or inside a pod CIDR.
func (p ImportPolicy) Accept(c Candidate) (bool, string) {
	if !c.NextHop.IsValid() || c.NextHop.IsUnspecified() {
		return false, RejectInvalidNextHop
	}
	if acc, ok := p.External[c.From]; ok && !p.Cluster[c.From] {
		return p.acceptExternal(c, acc)
	}
	if !p.Cluster[c.From] {
		return false, RejectUnknownPeer
	}
	owner, ok := p.Owners[c.Prefix]
	switch {
	case !ok:
		return false, RejectNotPodCIDR
	case owner == p.Local:
		return false, RejectOwnCIDR
	case owner != c.NextHop:
		return false, RejectWrongNextHop
	}
	return true, ""
}

func (p ImportPolicy) acceptExternal(c Candidate, accepted []netip.Prefix) (bool, string) {
	inside := slices.ContainsFunc(accepted, func(a netip.Prefix) bool {
		return a.Bits() <= c.Prefix.Bits() && a.Contains(c.Prefix.Addr())
	})
	if !inside {
		return false, RejectNotAccepted
	}
	for pod := range p.Owners {
		if pod.Bits() <= c.Prefix.Bits() && pod.Contains(c.Prefix.Addr()) {
			return false, RejectInsidePodCIDR
		}
	}
	return true, ""
}

// PolicyFor builds the import policy of the local node from the cluster's
// nodes and the sessions Sessions computed.
func PolicyFor(local Node, nodes []Node, sessions []Session) ImportPolicy {
	p := ImportPolicy{Local: local.Addr, Owners: map[netip.Prefix]netip.Addr{},
		Cluster: map[netip.Addr]bool{}, External: map[netip.Addr][]netip.Prefix{}}
	for _, n := range append(slices.Clone(nodes), local) { // the local node's claim wins
		if !n.Addr.IsValid() {
			continue
		}
		p.Cluster[n.Addr] = true
		for _, c := range n.PodCIDRs {
			p.Owners[c.Masked()] = n.Addr
		}
	}
	for _, s := range sessions {
		if s.Kind == KindExternal {
			p.External[s.Peer.Addr] = slices.Clone(s.Accepted)
		}
	}
	return p
}
