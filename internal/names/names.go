// Package names owns the names of Weft's kernel objects that more than one
// room uses (the plugin, weftd's installer, the policy renderer, the
// encapsulation guard), so they are written once. It holds constants only.
package names

// Bridge is the node's pod bridge: the CNI plugin attaches every pod's
// host veth to it, the conflist names it, policy and the guard match
// traffic from it.
const Bridge = "weft0"
