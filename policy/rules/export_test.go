package rules

// Internals the external tests (package rules_test) check directly.
var PolicyChain = policyChain

const (
	Ingress = ingress
	Egress  = egress
)

var PodSetName = podSetName

// CachedPods and CachedPolicies are the sizes of the renderer's caches.
func (rr *Renderer) CachedPods() int     { return len(rr.pods) }
func (rr *Renderer) CachedPolicies() int { return len(rr.policies) }
