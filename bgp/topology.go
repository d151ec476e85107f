package bgp

import (
	"net/netip"
	"slices"
)

// Node is what the topology and the import filter need to know about one
// cluster node. The caller builds it from wherever nodes are described
// (Kubernetes Node objects, in weftd).
type Node struct {
	Name string
	// Addr is the node's underlay address: its BGP session address and
	// the next hop of its pod CIDRs.
	Addr netip.Addr
	// ASN is the node's AS number (the backend's asNumber unless
	// overridden per node).
	ASN            uint32
	RouteReflector bool
	Labels         map[string]string
	PodCIDRs       []netip.Prefix
}

// SessionKind says why a session exists.
type SessionKind string

// The session kinds.
const (
	// KindMesh: full mesh, every node with every other.
	KindMesh SessionKind = "mesh"
	// KindReflector: this node is a reflector client, the peer a reflector.
	KindReflector SessionKind = "reflector"
	// KindReflectorPeer: both ends are reflectors.
	KindReflectorPeer SessionKind = "reflector-peer"
	// KindClient: this node is a reflector, the peer its client.
	KindClient SessionKind = "client"
	// KindExternal: a router outside the cluster.
	KindExternal SessionKind = "external"
)

// Session is one BGP session this node should have.
type Session struct {
	Kind SessionKind
	// NodeName is the peer node's name; empty for external peers.
	NodeName string
	// Peer is the session, without the password of an external peer
	// (the caller resolves PasswordRef into Peer.Password).
	Peer        Peer
	PasswordRef *SecretRef
	// Accepted are an external peer's acceptedPrefixes.
	Accepted []netip.Prefix
}

// SelectorMatch reports whether a node selector picks a node.
type SelectorMatch func(selector map[string]string, n Node) bool

// MatchLabels is the plain SelectorMatch: every selector label must be on
// the node with the same value; an empty selector picks every node.
func MatchLabels(selector map[string]string, n Node) bool {
	for k, v := range selector {
		if got, ok := n.Labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// Sessions is the list of sessions the local node should have, sorted by
// peer address: a full mesh when nodeToNodeMesh is on and no node is a
// route reflector; as soon as any node is a reflector, reflectors peer with
// each other and with every client, and clients only with the reflectors.
// External peers are added for the nodes their selector picks. Nodes
// without an address, and the local node itself, get no session. When an
// external peer has the address of a node, the node's session wins.
//
// Of two nodes, only the one with the higher address dials; the other
// waits (Peer.Passive). Besides avoiding connection collisions, this keeps
// graceful restart intact with GoBGP v3: a helper holding a restarting
// peer's stale routes drops them all if one of its own reconnect attempts
// fails, which both-sides-dial makes likely (each side keeps a failed
// session Idle for 5 s and closes what the other dials meanwhile).
func Sessions(local Node, nodes []Node, cfg BackendConfig, match SelectorMatch) []Session {
	if match == nil {
		match = MatchLabels
	}
	var out []Session
	seen := map[netip.Addr]bool{local.Addr: true}
	reflectors := slices.ContainsFunc(nodes, func(n Node) bool { return n.RouteReflector })
	for _, n := range nodes {
		if n.Name == local.Name || !n.Addr.IsValid() || seen[n.Addr] {
			continue
		}
		kind, ok := clusterKind(local, n, reflectors, cfg.NodeToNodeMesh)
		if !ok {
			continue
		}
		seen[n.Addr] = true
		p := Peer{Addr: n.Addr, ASN: n.ASN, Port: cfg.Port, Passive: local.Addr.Less(n.Addr)}
		if kind == KindClient && n.ASN == local.ASN {
			p.RouteReflectorClient = true
			p.ClusterID = cfg.ClusterID
		}
		out = append(out, Session{Kind: kind, NodeName: n.Name, Peer: p})
	}
	for _, e := range cfg.Peers {
		if seen[e.Addr] || !match(e.NodeSelector, local) {
			continue
		}
		seen[e.Addr] = true
		out = append(out, Session{Kind: KindExternal, PasswordRef: e.PasswordRef,
			Peer: Peer{Addr: e.Addr, ASN: e.ASN, Port: DefaultPort, External: true}, Accepted: slices.Clone(e.Accepted)})
	}
	slices.SortFunc(out, func(a, b Session) int { return a.Peer.Addr.Compare(b.Peer.Addr) })
	return out
}

func clusterKind(local, n Node, reflectors, mesh bool) (SessionKind, bool) {
	switch {
	case !reflectors:
		return KindMesh, mesh
	case local.RouteReflector && n.RouteReflector:
		return KindReflectorPeer, true
	case local.RouteReflector:
		return KindClient, true
	case n.RouteReflector:
		return KindReflector, true
	default:
		return "", false
	}
}
