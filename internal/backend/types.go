package backend

import (
	"net/netip"
	"slices"
	"strings"
)

// Node annotations weftd publishes on its own Node object.
const (
	// AnnoPodCIDR is the node's pod subnet (leased or from spec.podCIDR).
	AnnoPodCIDR = "weft.dev/pod-cidr"
	// AnnoPublicIP is the node's underlay address peers send to.
	AnnoPublicIP = "weft.dev/public-ip"
	// AnnoBackend is the encapsulation identity the node sends with to
	// every peer (during a migration: the previous one until it sends the
	// new one to all).
	AnnoBackend = "weft.dev/backend"
	// AnnoBackends lists, comma separated, the encapsulation identities
	// the node can decapsulate (receive) right now.
	AnnoBackends = "weft.dev/backends"
	// AnnoMigration is the node's migration phase ("" when none runs):
	// "receive", "send" or "drain" (see daemon/fabric).
	AnnoMigration = "weft.dev/migration"
	// AnnoPrefix is the prefix of every weft annotation.
	AnnoPrefix = "weft.dev/"
)

// Peer is a remote node as a backend needs to know it.
type Peer struct {
	Name       string
	UnderlayIP netip.Addr
	PodCIDRs   []netip.Prefix
	// Backends the peer can decapsulate.
	Backends []string
	// Attrs are the peer's weft.dev/* annotations (backend specific data,
	// e.g. the VXLAN VTEP MAC).
	Attrs map[string]string
	// Labels are the Node's labels (e.g. weft.dev/route-reflector).
	Labels map[string]string
}

// Accepts reports whether the peer can receive traffic of the
// encapsulation identity id (a backend's type is the identity of its
// default section).
func (p Peer) Accepts(id string) bool {
	return slices.Contains(p.Backends, id)
}

// AcceptsType reports whether the peer receives any identity of backend
// type t (bgp: it runs a speaker, whatever its ipipMode).
func (p Peer) AcceptsType(t string) bool {
	return slices.ContainsFunc(p.Backends, func(id string) bool { return IdentityType(id) == t })
}

// MaxOverhead is the largest encapsulation overhead of any backend (VXLAN
// over IPv4: 50 bytes). Pods get the underlay MTU minus it, whatever
// backend runs, so a switch never needs their MTU changed.
const MaxOverhead = 50

// LocalNode is this node as a backend needs to know it.
type LocalNode struct {
	Name       string
	UnderlayIP netip.Addr
	// UnderlayLink is the name of the link that holds UnderlayIP.
	UnderlayLink string
	UnderlayMTU  int
	// PodMTU is the pods' MTU (net-conf.json's mtu, else UnderlayMTU -
	// MaxOverhead); 0 when unknown.
	PodMTU  int
	PodCIDR netip.Prefix
	Network netip.Prefix
	// Labels and Attrs (weft.dev/* annotations) of the own Node object, as
	// for a Peer.
	Labels map[string]string
	Attrs  map[string]string
}

// ParseBackends splits a weft.dev/backends annotation value.
func ParseBackends(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Published is what a backend needs its node to publish: the MTU pods can
// use over it, and weft.dev/* annotations (e.g. the VTEP MAC) for peers.
type Published struct {
	MTU   int
	Attrs map[string]string
}

// ApplyResult reports one convergence of a backend.
type ApplyResult struct {
	// Published may change when Apply had to recreate a device.
	Published Published
	// Peers is the number of peers now reachable.
	Peers int
	// Changes counts kernel objects added, replaced or removed.
	Changes int
	// Problems are peers (or parts) left out, with the reason.
	Problems []string
}
