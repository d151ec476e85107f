package bgp

import (
	"context"
	"net/netip"
	"slices"
	"time"
)

// Speaker is this room's BGP speaker: sessions and prefixes in, learned
// routes out. It knows nothing about Kubernetes and hides the BGP library
// (GoBGP v3 today, see GoBGP) behind this interface. All lists are
// declarative: each call replaces the whole previous list.
type Speaker interface {
	// Start starts BGP with cfg. A stopped speaker can be started again.
	Start(ctx context.Context, cfg Config) error
	// SetPeers converges the sessions to exactly peers: new ones are
	// added, missing ones removed, changed ones re-formed.
	SetPeers(ctx context.Context, peers []Peer) error
	// Advertise converges the locally originated prefixes to exactly
	// prefixes (the node's pod CIDRs), with next hop Config.NextHop.
	Advertise(ctx context.Context, prefixes []netip.Prefix) error
	// SetImportPolicy replaces the policy that decides which learned
	// paths appear in Learned.
	SetImportPolicy(p ImportPolicy)
	// Learned is the current set of accepted routes, one per prefix,
	// sorted by prefix.
	Learned() []Route
	// Rejected is the current set of rejected paths and how many distinct
	// rejections were seen since Start.
	Rejected() ([]Rejection, uint64)
	// Changed is signalled (coalesced) after Learned or Rejected changed.
	// Peer states are polled (PeerStates).
	Changed() <-chan struct{}
	// PeerStates reports every configured session, sorted by address.
	PeerStates(ctx context.Context) ([]PeerState, error)
	// Stop closes every session (peers withdraw this node's routes) and
	// the listener, and leaves no goroutine of the session behind. To
	// restart gracefully instead (peers keep the routes for the graceful
	// restart time), let the process exit without Stop.
	Stop(ctx context.Context) error
}

// Config starts a Speaker.
type Config struct {
	RouterID netip.Addr
	ASN      uint32
	// ListenAddr is the address to accept sessions on (the node's
	// underlay address) and the source of outgoing ones; unset listens on
	// every address.
	ListenAddr netip.Addr
	// ListenPort defaults to 179.
	ListenPort uint16
	// NextHop of advertised prefixes; defaults to ListenAddr, else
	// RouterID.
	NextHop netip.Addr
	// GracefulRestart is the restart time offered to peers (they keep this
	// node's routes that long when its sessions drop without a
	// NOTIFICATION); 0 turns graceful restart off.
	GracefulRestart time.Duration
	// ConnectRetry defaults to 5s, HoldTime to 90s (keepalive = a third).
	ConnectRetry time.Duration
	HoldTime     time.Duration
}

func (c Config) withDefaults() Config {
	if c.ListenPort == 0 {
		c.ListenPort = DefaultPort
	}
	if !c.NextHop.IsValid() {
		c.NextHop = c.ListenAddr
		if !c.NextHop.IsValid() {
			c.NextHop = c.RouterID
		}
	}
	if c.ConnectRetry <= 0 {
		c.ConnectRetry = 5 * time.Second
	}
	if c.HoldTime <= 0 {
		c.HoldTime = 90 * time.Second
	}
	return c
}

// Peer is one BGP session.
type Peer struct {
	Addr netip.Addr
	ASN  uint32
	// Port is the peer's port; 0 means 179.
	Port uint16
	// Password is the TCP-MD5 key; empty for none.
	Password string
	// RouteReflectorClient makes this node a reflector for the peer, with
	// ClusterID.
	RouteReflectorClient bool
	ClusterID            netip.Addr
	// Passive: wait for the peer to connect, never dial it.
	Passive bool
	// External: a router outside the cluster. It is sent this node's own
	// prefixes only, never other nodes' routes.
	External bool
}

// Route is an accepted learned route.
type Route struct {
	Prefix  netip.Prefix
	NextHop netip.Addr
	// From is the neighbor it was learned from (a reflector, for a
	// reflected route).
	From netip.Addr
	// Stale is set while the sender is restarting gracefully.
	Stale bool
}

// Rejection is a path the import policy refused.
type Rejection struct {
	Candidate
	Reason string
}

// PeerState is the health of one configured session.
type PeerState struct {
	Addr        netip.Addr
	ASN         uint32
	State       string
	Established bool
	// Received is how many paths the peer currently advertises to us.
	Received uint64
}

func sortRoutes(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int {
		if c := a.Prefix.Addr().Compare(b.Prefix.Addr()); c != 0 {
			return c
		}
		return a.Prefix.Bits() - b.Prefix.Bits()
	})
}
