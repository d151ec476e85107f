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
