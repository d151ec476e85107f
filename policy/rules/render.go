package rules

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/endpoint/record"
	"github.com/weftnet/weft/internal/names"
)

// Config is what the renderer needs to know about the node.
type Config struct {
	Bridge    string // the pod bridge, "weft0"
	AllowMark uint32 // packet mark bit policy chains set to say "allowed"
}

// DefaultConfig is the node layout weft uses.
func DefaultConfig() Config { return Config{Bridge: names.Bridge, AllowMark: 0x100000} }

// Input is everything the renderer looks at.
type Input struct {
	Policies   []*networkingv1.NetworkPolicy
	Pods       []*corev1.Pod
	Namespaces []*corev1.Namespace
	Endpoints  []record.Endpoint // this node's attachments
}

type localEP struct {
	ep  record.Endpoint
	pod *podInfo // nil: no matching pod (fail closed)
	ips []netip.Addr
}

type renderer struct {
	cfg      Config
	rr       *Renderer
	nsLabels map[string]labels.Set
	podsByNS map[string][]*podInfo
	nsFP     map[string]fingerprint // fingerprintOf(podsByNS[ns])
	sets     map[string]*IPSet
	chains   map[string][]Rule
	podSets  map[string]podList // peer key -> pods (memo)
	// usedMembers / usedFilters replace the Renderer's caches after this
	// render, which drops entries no longer used.
	usedMembers  map[string]cachedMembers
	usedFilters  map[filterKey]cachedFilter
	usedPeers    map[string]podList
	usedChains   map[chainKey]cachedChain
	usedEPChains map[string][]Rule
	nsSorted     []string            // namespaces that have pods, sorted
	nsMatch      map[string][]string // namespace selector -> nsSorted it matches
}

// Render computes the desired dataplane for one node. It is pure: the same
// input gives the same State.
func Render(cfg Config, in Input) *State {
	return NewRenderer(cfg).Render(in)
}

// Render computes the desired dataplane, like the package-level Render.
func (rr *Renderer) Render(in Input) *State {
	cfg := rr.cfg
	// Sized as the last render, so the maps do not grow and rehash.
	z := rr.last
	r := &renderer{cfg: cfg, rr: rr, nsLabels: make(map[string]labels.Set, len(in.Namespaces)),
		podsByNS: make(map[string][]*podInfo, len(in.Namespaces)), nsFP: make(map[string]fingerprint, len(in.Namespaces)),
		sets: make(map[string]*IPSet, z.sets), chains: make(map[string][]Rule, z.chains), podSets: make(map[string]podList, z.podSets),
		usedMembers: make(map[string]cachedMembers, len(rr.members)), usedFilters: make(map[filterKey]cachedFilter, len(rr.filters)),
		usedPeers:  make(map[string]podList, len(rr.peers)),
		usedChains: make(map[chainKey]cachedChain, len(rr.chains)), usedEPChains: make(map[string][]Rule, len(rr.epChains))}
	defer func() {
		rr.members, rr.filters, rr.chains, rr.epChains = r.usedMembers, r.usedFilters, r.usedChains, r.usedEPChains
		rr.peers = r.usedPeers
		rr.last = renderSizes{sets: len(r.sets), chains: len(r.chains), podSets: len(r.podSets)}
	}()
	for _, ns := range in.Namespaces {
		l := labels.Set{}
		for k, v := range ns.Labels {
			l[k] = v
		}
		l["kubernetes.io/metadata.name"] = ns.Name
		r.nsLabels[ns.Name] = l
	}
	locals := r.indexPods(in)
	st := &State{}
	pols := make([]*compiled, 0, len(in.Policies))
	seenPol := map[types.UID]bool{}
	for _, np := range in.Policies {
		pols = append(pols, rr.compile(np, seenPol))
	}
	for uid := range rr.policies {
		if !seenPol[uid] {
			delete(rr.policies, uid)
		}
	}
	sort.Slice(pols, func(i, j int) bool { return pols[i].owner() < pols[j].owner() })
	byNS := map[string][]*compiled{}
	for _, c := range pols {
		byNS[c.ns] = append(byNS[c.ns], c)
	}

	for _, l := range locals {
		st.Endpoints = append(st.Endpoints, EndpointStatus{HostVeth: l.ep.HostVeth, Namespace: l.ep.PodNamespace,
			Name: l.ep.PodName, UID: l.ep.PodUID, Ready: l.pod != nil})
		r.endpointChains(l, byNS[l.ep.PodNamespace])
	}
	r.dispatch(st, locals)
	for _, c := range pols { // policies that select pods here (or whose podSelector is broken)
		if c.err != nil && (c.rulesDone || c.sel == nil) {
			st.Errors = append(st.Errors, c.err)
		}
	}

	names := make([]string, 0, len(r.chains))
	for n := range r.chains {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		st.Chains = append(st.Chains, Chain{Name: n, Rules: r.chains[n]})
	}
	setNames := make([]string, 0, len(r.sets))
	for n := range r.sets {
		setNames = append(setNames, n)
	}
	sort.Strings(setNames)
	for _, n := range setNames {
		st.IPSets = append(st.IPSets, *r.sets[n])
	}
	return st
}

// indexPods builds pod infos (skipping host-network and finished pods) and
// matches this node's endpoint records to them.
func (r *renderer) indexPods(in Input) []*localEP {
	type nsName struct{ ns, name string }
	eps := append([]record.Endpoint(nil), in.Endpoints...)
	sort.Slice(eps, func(i, j int) bool { return eps[i].HostVeth < eps[j].HostVeth })
	locals := make([]*localEP, 0, len(eps))
	byKey := map[nsName][]*localEP{}
	for _, ep := range eps {
		l := &localEP{ep: ep}
		l.ips, _ = ep.Addrs()
		locals = append(locals, l)
		k := nsName{ep.PodNamespace, ep.PodName}
		byKey[k] = append(byKey[k], l)
	}
	r.rr.gen++
	r.rr.hits = 0
	byNS := map[string]*[]*podInfo{} // appends without a map assignment per pod
	for _, p := range in.Pods {
		pi := r.rr.podInfo(p)
		if pi == nil { // host-network or finished
			continue
		}
		if ls, ok := byKey[nsName{p.Namespace, p.Name}]; ok {
			var mine []*localEP
			for _, l := range ls {
				if !recordOf(l.ep, pi.uid, p) {
					continue // a record of an earlier pod with this name
				}
				mine = append(mine, l)
				for _, a := range l.ips { // the record knows the IP before Pod status does
					if a.Is4() && !containsAddr(pi.ips, a) {
						cp := *pi // cached infos are shared: copy before changing
						cp.ips = append(append([]netip.Addr(nil), pi.ips...), a)
						b4 := a.As4()
						cp.id = mix64(pi.id ^ uint64(binary.BigEndian.Uint32(b4[:]))<<32)
						pi = &cp
					}
				}
			}
			for _, l := range mine {
				l.pod = pi
			}
		}
		if len(pi.ips) == 0 {
			continue
		}
		// Order does not matter: set members are sorted.
		sl := byNS[pi.ns]
		if sl == nil {
			s := make([]*podInfo, 0, r.rr.nsLen[pi.ns]) // as many as last time
			sl = &s
			byNS[pi.ns] = sl
		}
		*sl = append(*sl, pi)
	}
	nsLen := make(map[string]int, len(byNS))
	for ns, sl := range byNS {
		r.podsByNS[ns] = *sl
		r.nsFP[ns] = fingerprintOf(*sl)
		nsLen[ns] = len(*sl)
	}
	r.rr.nsLen = nsLen
	// Drop cached pods not seen in this render; sweep only once they are
	// more than an eighth, so one changed pod does not cost a full sweep.
	if stale := len(r.rr.pods) - r.rr.hits; stale > 0 && stale >= r.rr.hits/8 {
		for p, e := range r.rr.pods {
			if e.gen != r.rr.gen {
				delete(r.rr.pods, p)
			}
		}
	}
	return locals
}

// MirrorAnnotation is set by kubelet on the mirror Pod of a static pod; its
// value is the static pod's UID, which kubelet passes to CNI as
// K8S_POD_UID while the mirror Pod has a UID of its own.
const MirrorAnnotation = "kubernetes.io/config.mirror"

// recordOf reports whether a record (matched by namespace/name already)
// belongs to pod p: no UID in the record, the Pod's UID, or for a mirror
// Pod the static pod's UID. Each record is one sandbox (infra container
// ID and ifname, hence its own host veth), so two sandboxes of one Pod
// are both matched and waited on separately.
func recordOf(ep record.Endpoint, uid string, p *corev1.Pod) bool {
	return ep.PodUID == "" || ep.PodUID == uid || (p.Annotations[MirrorAnnotation] != "" && ep.PodUID == p.Annotations[MirrorAnnotation])
}

func containsAddr(s []netip.Addr, a netip.Addr) bool {
	for _, x := range s {
		if x == a {
			return true
		}
	}
	return false
}

// endpointChains renders WEFT-TO-<veth> (ingress) and WEFT-FROM-<veth>
// (egress) for one local endpoint.
func (r *renderer) endpointChains(l *localEP, pols []*compiled) {
	veth := l.ep.HostVeth
	who := "endpoint " + l.ep.PodNamespace + "/" + l.ep.PodName
	if l.pod == nil {
		drop := []Rule{{Action: Action{Verb: Drop}, Comment: who + ": pod not known, fail closed"}}
		r.chains[ToChain(veth)] = drop
		r.chains[FromChain(veth)] = drop
		return
	}
	var selecting [2][]*compiled
	var broken *compiled
	for _, c := range pols {
		if !c.selects(l.pod) {
			continue
		}
		c.ensureRules()
		if c.err != nil {
			if broken == nil {
				broken = c
			}
			continue
		}
		for _, dir := range []direction{ingress, egress} {
			if c.types[dir] {
				selecting[dir] = append(selecting[dir], c)
			}
		}
	}
	for _, dir := range []direction{ingress, egress} {
		name := ToChain(veth)
		if dir == egress {
			name = FromChain(veth)
		}
		switch {
		case broken != nil:
			r.chains[name] = []Rule{{Action: Action{Verb: Drop},
				Comment: who + ": fail closed, policy " + broken.owner() + " cannot be rendered"}}
		case len(selecting[dir]) == 0:
			r.chains[name] = []Rule{{Action: Action{Verb: Return}, Comment: who + ": no " + dir.String() + " policy, not isolated"}}
		default:
			var sig strings.Builder // what the rules are made of
			sig.WriteString(who)
			pcs := make([]string, len(selecting[dir]))
			for i, c := range selecting[dir] {
				pcs[i] = r.policyChain(c, dir, l.pod)
				sig.WriteString("|" + pcs[i] + "|" + c.owner())
			}
			key := name + "|" + sig.String()
			if cached, ok := r.rr.epChains[key]; ok {
				r.usedEPChains[key] = cached
				r.chains[name] = cached
				continue
			}
			m := r.cfg.AllowMark
			rules := make([]Rule, 0, 2+2*len(pcs))
			rules = append(rules, Rule{Action: Action{Verb: SetMark, Mark: 0, Mask: m}, Comment: who})
			for i, c := range selecting[dir] {
				rules = append(rules,
					Rule{Action: Action{Verb: Jump, Target: pcs[i]}, Comment: "policy " + c.owner()},
					Rule{Match: Match{Mark: m, MarkMask: m}, Action: Action{Verb: Return}, Comment: "allowed by " + c.owner()})
			}
			rules = append(rules, Rule{Action: Action{Verb: Drop}, Comment: who + ": default deny " + dir.String()})
			r.chains[name] = rules
			r.usedEPChains[key] = rules
		}
	}
}

// policyChain renders (once) the chain for one policy in one direction and
// returns its name. Ingress chains with named ports depend on the
// destination endpoint's containerPorts and get one variant per resolution.
func (r *renderer) policyChain(c *compiled, dir direction, ep *podInfo) string {
	variant := ""
	if dir == ingress {
		variant = namedVariant(c.rules[ingress], ep)
	}
	ck := chainKey{c: c, dir: dir, variant: variant}
	if cc, ok := r.rr.chains[ck]; ok { // same compiled policy, same rules
		if _, done := r.chains[cc.name]; !done {
			for _, cr := range c.rules[dir] { // the sets it uses, with current members
				for _, p := range cr.peers {
					r.peerSet(c, p)
				}
			}
			r.chains[cc.name] = cc.rules
		}
		r.usedChains[ck] = cc
		return cc.name
	}
	name := policyChain(dir, c.ns, c.name, variant)
	if _, done := r.chains[name]; done {
		return name
	}
	var rules []Rule
	for i, cr := range c.rules[dir] {
		owner := fmt.Sprintf("policy %s %s[%d]", c.owner(), dir, i)
		if dir == ingress {
			rules = append(rules, r.ingressRules(c, cr, ep, owner)...)
		} else {
			rules = append(rules, r.egressRules(c, cr, owner)...)
		}
	}
	if rules == nil {
		rules = []Rule{} // an existing, empty chain: allows nothing
	}
	r.chains[name] = rules
	if dir == ingress || !hasNamedPort(c.rules[egress]) { // named egress ports depend on pods
		r.usedChains[ck] = cachedChain{name: name, rules: rules}
	}
	return name
}

func hasNamedPort(rules []rule) bool {
	for _, cr := range rules {
		for _, p := range cr.ports {
			if p.name != "" {
				return true
			}
		}
	}
	return false
}

func namedVariant(rules []rule, ep *podInfo) string {
	var parts []string
	for _, cr := range rules {
		for _, p := range cr.ports {
			if p.name == "" {
				continue
			}
			n, ok := ep.namedPort(p.name, p.proto)
			v := "-"
			if ok {
				v = strconv.Itoa(int(n))
			}
			parts = append(parts, p.name+"/"+p.proto+"="+v)
		}
	}
	return strings.Join(parts, ";")
}

func (r *renderer) allow(m Match, owner string) Rule {
	return Rule{Match: m, Action: Action{Verb: SetMark, Mark: r.cfg.AllowMark, Mask: r.cfg.AllowMark}, Comment: owner}
}

func (r *renderer) ingressRules(c *compiled, cr rule, ep *podInfo, owner string) []Rule {
	peers := []Match{{}}
	if cr.peers != nil {
		peers = peers[:0]
		for _, p := range cr.peers {
			peers = append(peers, Match{SrcSet: r.peerSet(c, p)})
		}
	}
	ports := []Match{{}}
	if cr.ports != nil {
		ports = ports[:0]
		for _, p := range cr.ports {
			if p.name == "" {
				ports = append(ports, Match{Proto: p.proto, DPortMin: p.min, DPortMax: p.max})
			} else if n, ok := ep.namedPort(p.name, p.proto); ok {
				ports = append(ports, Match{Proto: p.proto, DPortMin: n, DPortMax: n})
			}
		}
	}
	var out []Rule
	for _, pm := range peers {
		for _, po := range ports {
			pm.Proto, pm.DPortMin, pm.DPortMax = po.Proto, po.DPortMin, po.DPortMax
			out = append(out, r.allow(pm, owner))
		}
	}
	return out
}

func (r *renderer) egressRules(c *compiled, cr rule, owner string) []Rule {
	var out []Rule
	var numeric []port
	var named []port
	for _, p := range cr.ports {
		if p.name != "" {
			named = append(named, p)
		} else {
			numeric = append(numeric, p)
		}
	}
	if cr.ports == nil || len(numeric) > 0 {
		dsts := []Match{{}}
		if cr.peers != nil {
			dsts = dsts[:0]
			for _, p := range cr.peers {
				dsts = append(dsts, Match{DstSet: r.peerSet(c, p)})
			}
		}
		ports := []Match{{}}
		if cr.ports != nil {
			ports = ports[:0]
			for _, p := range numeric {
				ports = append(ports, Match{Proto: p.proto, DPortMin: p.min, DPortMax: p.max})
			}
		}
		for _, d := range dsts {
			for _, po := range ports {
				d.Proto, d.DPortMin, d.DPortMax = po.Proto, po.DPortMin, po.DPortMax
				out = append(out, r.allow(d, owner))
			}
		}
	}
	// Named ports mean a number per destination pod: one set per number.
	for _, np := range named {
		peers := cr.peers
		if peers == nil {
			peers = []peer{{nsSel: labels.Everything()}} // every pod
		}
		for _, p := range peers {
			key, pl := r.peerPods(c, p)
			byNum := map[uint16][]*podInfo{}
			for _, pi := range pl.pods {
				if n, ok := pi.namedPort(np.name, np.proto); ok {
					byNum[n] = append(byNum[n], pi)
				}
			}
			nums := make([]int, 0, len(byNum))
			for n := range byNum {
				nums = append(nums, int(n))
			}
			sort.Ints(nums)
			for _, n := range nums {
				k := fmt.Sprintf("%s|port=%s/%s/%d", key, np.name, np.proto, n)
				set := r.podSet(k, listOf(byNum[uint16(n)]), owner)
				out = append(out, r.allow(Match{DstSet: set, Proto: np.proto, DPortMin: uint16(n), DPortMax: uint16(n)}, owner))
			}
		}
	}
	return out
}

// peerSet returns the name of the ipset holding the peer's addresses.
func (r *renderer) peerSet(c *compiled, p peer) string {
	if p.block != nil {
		key := p.block.key()
		name := netSetName(key)
		if _, ok := r.sets[name]; !ok {
			r.sets[name] = &IPSet{Name: name, Type: HashNet, Members: blockMembers(p.block), Owner: "ipBlock " + key}
		}
		return name
	}
	key, pl := r.peerPods(c, p)
	owner := p.owner
	if owner == "" {
		owner = "peer " + key
	}
	return r.podSet(key, pl, owner)
}

func (r *renderer) podSet(key string, pl podList, owner string) string {
	c, cached := r.rr.members[key]
	name := c.name
	if !cached {
		name = podSetName(key)
	}
	if _, ok := r.sets[name]; ok {
		return name
	}
	// The same pod infos (cached per resourceVersion) make the same members.
	if cached && c.pods == pl.fp {
		r.sets[name] = &IPSet{Name: name, Type: HashIP, Members: c.members, Owner: owner}
		r.usedMembers[key] = c
		return name
	}
	var members []string
	seen := map[netip.Addr]bool{}
	for _, pi := range pl.pods {
		for _, a := range pi.ips {
			if !seen[a] {
				seen[a] = true
				members = append(members, a.String())
			}
		}
	}
	sort.Strings(members)
	r.sets[name] = &IPSet{Name: name, Type: HashIP, Members: members, Owner: owner}
	r.usedMembers[key] = cachedMembers{name: name, pods: pl.fp, members: members}
	return name
}

// podList is pods with their fingerprint.
type podList struct {
	pods []*podInfo
	fp   fingerprint
}

func listOf(pods []*podInfo) podList { return podList{pods: pods, fp: fingerprintOf(pods)} }

// add folds the fingerprint of a disjoint list into f.
func (f fingerprint) add(g fingerprint) fingerprint {
	return fingerprint{n: f.n + g.n, sum: f.sum + g.sum, xor: f.xor ^ g.xor}
}

// peerPods resolves a peer to pods and a stable identity key. For an
// ipBlock peer (used with named egress ports) it is the known pods inside
// the block.
func (r *renderer) peerPods(c *compiled, p peer) (string, podList) {
	key := p.key
	if key == "" {
		key = peerKey(c.ns, p)
	}
	if pl, ok := r.podSets[key]; ok {
		return key, pl
	}
	var pl podList
	switch {
	case p.block != nil:
		var pods []*podInfo
		for _, nsPods := range r.podsByNS { // order does not matter: members are sorted
			for _, pi := range nsPods {
				for _, a := range pi.ips {
					if p.block.contains(a) {
						pods = append(pods, pi)
						break
					}
				}
			}
		}
		pl = listOf(pods)
	case p.nsSel == nil:
		pl = r.filterPods(c.ns, p.podSel, p.podSelStr)
	default:
		if r.nsSorted == nil {
			r.nsSorted = make([]string, 0, len(r.podsByNS))
			for ns := range r.podsByNS {
				r.nsSorted = append(r.nsSorted, ns)
			}
			sort.Strings(r.nsSorted)
		}
		nss := r.matchNamespaces(p.nsSel)
		var fp fingerprint
		for _, ns := range nss {
			fp = fp.add(r.filterPods(ns, p.podSel, p.podSelStr).fp)
		}
		// The same pods as last time: reuse the list, do not concatenate.
		if prev, ok := r.rr.peers[key]; ok && prev.fp == fp {
			pl = prev
		} else {
			pl.fp = fp
			for _, ns := range nss {
				pl.pods = append(pl.pods, r.filterPods(ns, p.podSel, p.podSelStr).pods...)
			}
		}
		r.usedPeers[key] = pl
	}
	r.podSets[key] = pl
	return key, pl
}

// peerKey is the identity of the pods a peer of a policy in ns resolves to.
func peerKey(ns string, p peer) string {
	switch {
	case p.block != nil:
		return "block=" + p.block.key()
	case p.nsSel == nil:
		return "ns=" + ns + "|pods=" + selString(p.podSel)
	default:
		return "nssel=" + selString(p.nsSel) + "|pods=" + selString(p.podSel)
	}
}

// matchNamespaces returns the sorted namespaces with pods that nsSel
// matches, once per selector and render (many peers share one).
func (r *renderer) matchNamespaces(nsSel labels.Selector) []string {
	key := nsSel.String()
	if m, ok := r.nsMatch[key]; ok {
		return m
	}
	var m []string
	for _, ns := range r.nsSorted {
		l, ok := r.nsLabels[ns]
		if !ok {
			l = labels.Set{"kubernetes.io/metadata.name": ns}
		}
		if nsSel.Matches(l) {
			m = append(m, ns)
		}
	}
	if r.nsMatch == nil {
		r.nsMatch = map[string][]string{}
	}
	r.nsMatch[key] = m
	return m
}

func selString(s labels.Selector) string {
	if s == nil {
		return "*"
	}
	return "{" + s.String() + "}"
}

// filterPods returns the namespace's pods matching sel, reusing the last
// result when the namespace holds the same pod infos as then.
func (r *renderer) filterPods(ns string, sel labels.Selector, selStr string) podList {
	pods := r.podsByNS[ns]
	if sel == nil || sel.Empty() {
		return podList{pods: pods, fp: r.nsFP[ns]}
	}
	if selStr == "" {
		selStr = sel.String()
	}
	key := filterKey{ns: ns, sel: selStr}
	if f, ok := r.usedFilters[key]; ok {
		return f.out
	}
	fp := r.nsFP[ns]
	if f, ok := r.rr.filters[key]; ok && f.in == fp {
		r.usedFilters[key] = f
		return f.out
	}
	out := listOf(filterPods(pods, sel))
	r.usedFilters[key] = cachedFilter{in: fp, out: out}
	return out
}

func filterPods(pods []*podInfo, sel labels.Selector) []*podInfo {
	var out []*podInfo
	for _, pi := range pods {
		if sel.Matches(labels.Set(pi.labels)) {
			out = append(out, pi)
		}
	}
	return out
}

// blockMembers renders an ipBlock for a hash:net set: the CIDR (a /0 is
// split in two /1, which ipset can store) and each except as nomatch.
func blockMembers(b *ipBlock) []string {
	var m []string
	if b.cidr.Bits() == 0 {
		if b.cidr.Addr().Is4() {
			m = append(m, "0.0.0.0/1", "128.0.0.0/1")
		}
	} else if b.cidr.Addr().Is4() {
		m = append(m, b.cidr.String())
	}
	for _, e := range b.except {
		if e.Addr().Is4() {
			m = append(m, e.String()+" nomatch")
		}
	}
	return m
}
