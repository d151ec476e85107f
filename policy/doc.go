// Package policy enforces Kubernetes NetworkPolicy (networking.k8s.io/v1)
// on one node with iptables and ipsets, the way Calico's Felix does: the
// Controller watches policies, pods, namespaces and this node's endpoint
// records, the pure renderer (package policy/rules) turns them into the
// desired chains and ipsets, and a Writer converges the kernel to it with
// one `iptables-restore --noflush` transaction per sync. Around that: the
// handler the CNI plugin waits on, conntrack clean-up of flows a change
// denies, the rebuild of missing endpoint records, health and metrics.
package policy
