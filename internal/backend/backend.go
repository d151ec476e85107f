// Package backend is the contract between weftd and its backends (vxlan/,
// udp/, bgp/): the Backend and Factory interfaces, and the plain types both
// sides share (the local node as a backend sees it, the peers it must
// reach, what the node publishes, the names of the weft.dev/* Node
// annotations). It sits low so every backend can import it without
// pointing up into daemon/; it imports nothing of Kubernetes.
package backend

import (
	"context"
	"encoding/json"
	"strings"
)

// Backend carries pod traffic to other nodes.
//
// Lifetime: Start receives a context that lives until Stop is called (the
// manager cancels it right after Stop returns, and when weftd exits). A
// backend may run goroutines bound to it (a UDP relay, a BGP server, a raw
// socket reader) for as long as it runs. Apply and Stop receive the
// caller's short per-sync context (about a minute): never keep it.
type Backend interface {
	// Type is the backend's name in net-conf.json (e.g. "vxlan").
	Type() string
	// Start creates or adopts the backend's devices for the local node
	// (never flushing what a previous weftd left) and returns what the
	// node must publish for peers. life lives until Stop.
	Start(life context.Context, local LocalNode) (Published, error)
	// Apply converges the data plane so every peer in the list is
	// reachable and nothing else is programmed. It is called on every
	// change and periodically, so it must also repair drift.
	Apply(ctx context.Context, peers []Peer) (ApplyResult, error)
	// Stop ends the backend. With cleanup its devices, entries and routes
	// are removed (switching away, uninstall) except routes another
	// backend now owns; without, they stay for the next weftd to adopt so
	// established traffic keeps flowing.
	Stop(ctx context.Context, cleanup bool) error
}

// LocalUpdater is implemented by a backend that follows changes of the
// local node's labels and annotations without a restart: the manager calls
// UpdateLocal before Apply when the section is unchanged. A backend
// without it sees the LocalNode of its Start only.
type LocalUpdater interface {
	UpdateLocal(local LocalNode)
}

// Factory builds backends of one type from their net-conf.json section.
// Each backend package exports its own; cmd/weftd assembles the list.
type Factory interface {
	Type() string
	// ValidateConfig decodes the section strictly (unknown fields are
	// errors) without touching the node.
	ValidateConfig(raw json.RawMessage) error
	New(raw json.RawMessage) (Backend, error)
	// Cleanup removes everything a backend of this type could have left on
	// the node (devices, chains, sets, routes), whether or not one runs and
	// whatever its configuration was. A node without any is success.
	Cleanup(ctx context.Context) error
}

// Identified is a backend whose encapsulation identity is not simply its
// type. The identity names what is on the wire ("vxlan/7/4789",
// "bgp/ipip"); two sections with the same identity can talk to each
// other, two with different identities cannot, so a change of identity is
// a migration (see daemon/fabric) and a change within one identity (an
// MTU, an AS number) a restart in place. A backend without it has its
// type as identity.
type Identified interface {
	Identity() string
}

// Identifier is a Factory that tells the identity of a section without
// building a backend (a Factory without it: the section's type).
type Identifier interface {
	Identity(raw json.RawMessage) (string, error)
}

// Receiver is a Factory that can rebuild a section receiving identity id
// (a weftd restarted mid-migration finds identities in its own
// weft.dev/backends that the ConfigMap no longer names, and must keep
// receiving them until its peers moved). current is the section now
// configured (of any type); ok is false when id is not this type's.
type Receiver interface {
	SectionFor(id string, current json.RawMessage) (raw json.RawMessage, ok bool)
}

// Reconfigurer is a backend that migrates between sections of its own
// type in place (bgp: one speaker per process; ipipMode is a per-peer
// choice). Reconfigure makes raw the section it sends with to every peer
// that accepts the new identity, while it keeps receiving (and sending to
// the other peers) the previous ones; Forget stops receiving id once no
// peer sends it any more.
type Reconfigurer interface {
	Reconfigure(ctx context.Context, raw json.RawMessage) (Published, error)
	Decapsulates() []string
	Forget(ctx context.Context, id string) error
}

// IdentityOf is b's identity.
func IdentityOf(b Backend) string {
	if i, ok := b.(Identified); ok {
		return i.Identity()
	}
	return b.Type()
}

// IdentityType is the backend type of an identity ("vxlan/7/4789" ->
// "vxlan").
func IdentityType(id string) string {
	t, _, _ := strings.Cut(id, "/")
	return t
}

// SectionIdentity decodes raw with decode and returns the decoded
// section's identity (a Factory's Identity, see Identifier).
func SectionIdentity[C Identified](decode func(json.RawMessage) (C, error), raw json.RawMessage) (string, error) {
	c, err := decode(raw)
	if err != nil {
		return "", err
	}
	return c.Identity(), nil
}
