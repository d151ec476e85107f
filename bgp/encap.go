package bgp

import (
	"context"
	"net/netip"

	"github.com/weftnet/weft/internal/backend"
)

// IPIP opens the IP-in-IP data path of ipipMode Always and CrossSubnet
// (HostIPIP: the kernel link where the kernel has ipip, else the
// userspace tunnel). nil in the Factory: those modes fail at Start.
type IPIP interface {
	// Start creates or adopts the device weft.ipip with mtu for local and
	// moves packets until ctx ends or the tunnel is stopped.
	Start(ctx context.Context, local backend.LocalNode, mtu int) (Tunnel, error)
	// Remove deletes the device (and the routes through it); one that is
	// not there is success.
	Remove() error
}

// Tunnel is a running IP-in-IP data path.
type Tunnel interface {
	// Device is the link routes to encapsulated peers go out of.
	Device() string
	// Impl is the implementation in use ("userspace" or "kernel").
	Impl() string
	// UnderlaySubnet is the prefix of the node's underlay address (for
	// CrossSubnet: peers inside it are reached without IP-in-IP).
	UnderlaySubnet() netip.Prefix
	// ViaPeer: routes into Device name the peer's underlay address as
	// gateway, onlink (the kernel ipip link takes the outer destination
	// from it); false when the device finds the peer itself (the
	// userspace tunnel's table).
	ViaPeer() bool
	// SetPeers replaces the nodes packets may be exchanged with and
	// returns what it left out.
	SetPeers(local []netip.Prefix, peers []backend.Peer) []string
	// Stop ends the data path; with remove the device goes too.
	Stop(remove bool) error
}
