package rules

import (
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Renderer renders repeatedly, reusing what it compiled from objects that
// did not change (same UID and resourceVersion, as informers guarantee).
// Its output is exactly Render's. Not safe for concurrent use.
type Renderer struct {
	cfg      Config
	policies map[types.UID]cachedPolicy
	pods     map[*corev1.Pod]*cachedPod // informer objects are immutable
	members  map[string]cachedMembers   // pod set key -> members
	filters  map[filterKey]cachedFilter // namespace, selector -> matching pods
	peers    map[string]podList         // namespace-selector peer key -> pods
	chains   map[chainKey]cachedChain
	epChains map[string][]Rule // endpoint chain name + signature -> rules
	dispatch *cachedDispatch
	nextID   uint64
	gen      uint64 // render counter
	hits     int    // distinct pods cache entries used in this render
	last     renderSizes
	nsLen    map[string]int // pods per namespace in the last render
}

// renderSizes are the sizes of the last render's maps (capacity hints).
type renderSizes struct{ sets, chains, podSets int }

type cachedMembers struct {
	name    string
	pods    fingerprint
	members []string
}

// chainKey identifies a policy chain's content: rules of a compiled policy
// (cached per resourceVersion) in one direction with one named-port
// resolution. Set names in the rules are stable across membership changes.
type chainKey struct {
	c       *compiled
	dir     direction
	variant string
}

type cachedChain struct {
	name  string
	rules []Rule
}

type filterKey struct{ ns, sel string }

type cachedFilter struct {
	in  fingerprint // of the namespace's pods
	out podList
}

// fingerprint identifies a set of pod infos regardless of order (informer
// listers return them in random order).
type fingerprint struct {
	n        int
	sum, xor uint64
}

func fingerprintOf(pods []*podInfo) fingerprint {
	f := fingerprint{n: len(pods)}
	for _, p := range pods {
		f.sum += p.id
		f.xor ^= p.id
	}
	return f
}

// mix64 is SplitMix64's finalizer: spreads counters over 64 bits.
func mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

func (rr *Renderer) newPodInfo(p *corev1.Pod) *podInfo {
	rr.nextID++
	pi := newPodInfo(p)
	pi.id = mix64(rr.nextID)
	return pi
}

type cachedPolicy struct {
	rv string
	c  *compiled
}

type cachedPod struct {
	rv  string
	p   *podInfo // nil: SkipPod
	gen uint64   // last render that used it
}

// SkipPod: host-network and finished pods are neither peers nor endpoints.
func SkipPod(p *corev1.Pod) bool {
	return p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

// NewRenderer returns a Renderer with empty caches.
func NewRenderer(cfg Config) *Renderer {
	return &Renderer{cfg: cfg, policies: map[types.UID]cachedPolicy{}, pods: map[*corev1.Pod]*cachedPod{},
		members: map[string]cachedMembers{}, filters: map[filterKey]cachedFilter{}, peers: map[string]podList{}, chains: map[chainKey]cachedChain{},
		epChains: map[string][]Rule{}}
}

func (rr *Renderer) compile(np *networkingv1.NetworkPolicy, seen map[types.UID]bool) *compiled {
	if np.UID == "" || np.ResourceVersion == "" {
		return compile(np)
	}
	seen[np.UID] = true
	if e, ok := rr.policies[np.UID]; ok && e.rv == np.ResourceVersion {
		return e.c
	}
	c := compile(np)
	rr.policies[np.UID] = cachedPolicy{rv: np.ResourceVersion, c: c}
	return c
}

// podInfo returns the pod's info (nil when SkipPod), cached per object
// and resourceVersion, so unchanged pods are not looked into again.
func (rr *Renderer) podInfo(p *corev1.Pod) *podInfo {
	if p.UID == "" || p.ResourceVersion == "" {
		if SkipPod(p) {
			return nil
		}
		return rr.newPodInfo(p)
	}
	if e, ok := rr.pods[p]; ok && e.rv == p.ResourceVersion {
		if e.gen != rr.gen {
			e.gen = rr.gen
			rr.hits++
		}
		return e.p
	}
	var pi *podInfo
	if !SkipPod(p) {
		pi = rr.newPodInfo(p)
	}
	rr.pods[p] = &cachedPod{rv: p.ResourceVersion, p: pi, gen: rr.gen}
	rr.hits++ // p is new, or its entry (of an earlier render) is replaced
	return pi
}
