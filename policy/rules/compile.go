package rules

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
)

type direction int

const (
	ingress direction = iota
	egress
)

func (d direction) String() string {
	if d == egress {
		return "egress"
	}
	return "ingress"
}

// peer is one NetworkPolicyPeer, compiled.
type peer struct {
	// pods: podSel in the policy's namespace (nsSel == nil), or in every
	// namespace nsSel matches. A nil podSel with nsSel set means all pods.
	podSel, nsSel labels.Selector
	block         *ipBlock
	// key and podSelStr are filled by ensureRules (renderer memo keys,
	// so the selectors are not re-stringified on every render).
	key, podSelStr, owner string
}

type ipBlock struct {
	cidr   netip.Prefix
	except []netip.Prefix
}

func (b *ipBlock) contains(a netip.Addr) bool {
	if !b.cidr.Contains(a) {
		return false
	}
	for _, e := range b.except {
		if e.Contains(a) {
			return false
		}
	}
	return true
}

func (b *ipBlock) key() string {
	s := make([]string, 0, len(b.except)+1)
	s = append(s, b.cidr.String())
	for _, e := range b.except {
		s = append(s, e.String())
	}
	return strings.Join(s, ",")
}

// port is one NetworkPolicyPort, compiled. name != "" for named ports.
type port struct {
	proto    string // tcp, udp, sctp
	min, max uint16 // 0 = every port
	name     string
}

type rule struct {
	peers []peer // nil: every peer
	ports []port // nil: every port
}

type compiled struct {
	ns, name  string
	sel       labels.Selector // nil when the podSelector itself is broken
	types     [2]bool         // ingress, egress
	rules     [2][]rule
	err       error
	typesOkay bool
	// Rules are compiled on first use (only policies selecting a pod on
	// this node need them); spec is the informer's immutable object.
	spec      *networkingv1.NetworkPolicySpec
	rulesDone bool
	headErrs  []error
}

func (c *compiled) owner() string { return c.ns + "/" + c.name }

func (c *compiled) selects(p *podInfo) bool {
	if p.ns != c.ns {
		return false
	}
	return c.sel == nil || c.sel.Matches(labels.Set(p.labels))
}

// compile validates a policy's podSelector and policyTypes; its rules are
// compiled by ensureRules when the policy selects a local pod. Errors are
// kept on the result: the renderer fails closed for the pods it selects.
func compile(np *networkingv1.NetworkPolicy) *compiled {
	c := &compiled{ns: np.Namespace, name: np.Name, spec: &np.Spec}
	var errs []error
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		errs = append(errs, fmt.Errorf("podSelector: %w", err))
	} else {
		c.sel = sel
	}
	c.typesOkay = true
	if len(np.Spec.PolicyTypes) == 0 {
		c.types[ingress] = true
		c.types[egress] = len(np.Spec.Egress) > 0
	}
	for _, t := range np.Spec.PolicyTypes {
		switch t {
		case networkingv1.PolicyTypeIngress:
			c.types[ingress] = true
		case networkingv1.PolicyTypeEgress:
			c.types[egress] = true
		default:
			c.typesOkay = false
			errs = append(errs, fmt.Errorf("unknown policyType %q", t))
		}
	}
	c.headErrs = errs
	if len(errs) > 0 {
		c.err = &PolicyError{Namespace: c.ns, Name: c.name, Err: errors.Join(errs...)}
	}
	return c
}

// ensureRules compiles the rules once and folds their errors into c.err.
func (c *compiled) ensureRules() {
	if c.rulesDone {
		return
	}
	c.rulesDone = true
	np := c.spec
	errs := c.headErrs
	for i, r := range np.Ingress {
		cr, err := compileRule(r.From, r.Ports)
		if err != nil {
			errs = append(errs, fmt.Errorf("ingress[%d]: %w", i, err))
		}
		c.rules[ingress] = append(c.rules[ingress], cr)
	}
	for i, r := range np.Egress {
		cr, err := compileRule(r.To, r.Ports)
		if err != nil {
			errs = append(errs, fmt.Errorf("egress[%d]: %w", i, err))
		}
		c.rules[egress] = append(c.rules[egress], cr)
	}
	for dir := range c.rules {
		for i := range c.rules[dir] {
			for j := range c.rules[dir][i].peers {
				p := &c.rules[dir][i].peers[j]
				p.key = peerKey(c.ns, *p)
				p.owner = "peer " + p.key
				if p.podSel != nil {
					p.podSelStr = p.podSel.String()
				}
			}
		}
	}
	if len(errs) > 0 {
		c.err = &PolicyError{Namespace: c.ns, Name: c.name, Err: errors.Join(errs...)}
	}
}

func compileRule(peers []networkingv1.NetworkPolicyPeer, ports []networkingv1.NetworkPolicyPort) (rule, error) {
	var r rule
	for i, p := range peers {
		cp, err := compilePeer(p)
		if err != nil {
			return r, fmt.Errorf("peer[%d]: %w", i, err)
		}
		r.peers = append(r.peers, cp)
	}
	for i, p := range ports {
		cp, err := compilePort(p)
		if err != nil {
			return r, fmt.Errorf("port[%d]: %w", i, err)
		}
		r.ports = append(r.ports, cp)
	}
	return r, nil
}

func compilePeer(p networkingv1.NetworkPolicyPeer) (peer, error) {
	var out peer
	if p.IPBlock != nil {
		if p.PodSelector != nil || p.NamespaceSelector != nil {
			return out, errors.New("ipBlock combined with a selector")
		}
		cidr, err := netip.ParsePrefix(p.IPBlock.CIDR)
		if err != nil {
			return out, fmt.Errorf("ipBlock cidr: %w", err)
		}
		b := &ipBlock{cidr: cidr.Masked()}
		for _, e := range p.IPBlock.Except {
			ep, err := netip.ParsePrefix(e)
			if err != nil {
				return out, fmt.Errorf("ipBlock except: %w", err)
			}
			ep = ep.Masked()
			if ep.Addr().Is4() != cidr.Addr().Is4() || ep.Bits() < cidr.Bits() || !cidr.Contains(ep.Addr()) {
				return out, fmt.Errorf("ipBlock except %s not inside %s", ep, cidr)
			}
			b.except = append(b.except, ep)
		}
		sort.Slice(b.except, func(i, j int) bool { return b.except[i].String() < b.except[j].String() })
		out.block = b
		return out, nil
	}
	if p.PodSelector == nil && p.NamespaceSelector == nil {
		return out, errors.New("empty peer (no podSelector, namespaceSelector or ipBlock)")
	}
	if p.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(p.PodSelector)
		if err != nil {
			return out, fmt.Errorf("podSelector: %w", err)
		}
		out.podSel = s
	}
	if p.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
		if err != nil {
			return out, fmt.Errorf("namespaceSelector: %w", err)
		}
		out.nsSel = s
	}
	return out, nil
}

func compilePort(p networkingv1.NetworkPolicyPort) (port, error) {
	out := port{proto: "tcp"}
	if p.Protocol != nil {
		switch *p.Protocol {
		case corev1.ProtocolTCP:
		case corev1.ProtocolUDP:
			out.proto = "udp"
		case corev1.ProtocolSCTP:
			out.proto = "sctp"
		default:
			return out, fmt.Errorf("unsupported protocol %q", *p.Protocol)
		}
	}
	if p.Port == nil {
		if p.EndPort != nil {
			return out, errors.New("endPort without port")
		}
		return out, nil
	}
	if p.Port.Type == intstr.String {
		if p.EndPort != nil {
			return out, errors.New("endPort with a named port")
		}
		if p.Port.StrVal == "" {
			return out, errors.New("empty port name")
		}
		out.name = p.Port.StrVal
		return out, nil
	}
	n := p.Port.IntVal
	if n < 1 || n > 65535 {
		return out, fmt.Errorf("port %d out of range", n)
	}
	out.min, out.max = uint16(n), uint16(n)
	if p.EndPort != nil {
		e := *p.EndPort
		if e < n || e > 65535 {
			return out, fmt.Errorf("endPort %d invalid for port %d", e, n)
		}
		out.max = uint16(e)
	}
	return out, nil
}

// podInfo is the part of a Pod the renderer uses.
type podInfo struct {
	id            uint64 // identity for order-independent cache fingerprints
	ns, name, uid string
	labels        map[string]string
	ips           []netip.Addr
	ports         []corev1.ContainerPort
}

// namedPort resolves name/proto against the pod's containerPorts.
func (p *podInfo) namedPort(name, proto string) (uint16, bool) {
	for _, cp := range p.ports {
		cpProto := strings.ToLower(string(cp.Protocol))
		if cpProto == "" {
			cpProto = "tcp"
		}
		if cp.Name == name && cpProto == proto && cp.ContainerPort > 0 && cp.ContainerPort <= 65535 {
			return uint16(cp.ContainerPort), true
		}
	}
	return 0, false
}

func newPodInfo(p *corev1.Pod) *podInfo {
	pi := &podInfo{ns: p.Namespace, name: p.Name, uid: string(p.UID), labels: p.Labels}
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil && a.Is4() {
			pi.ips = append(pi.ips, a)
		}
	}
	if len(pi.ips) == 0 && p.Status.PodIP != "" {
		if a, err := netip.ParseAddr(p.Status.PodIP); err == nil && a.Is4() {
			pi.ips = append(pi.ips, a)
		}
	}
	for _, c := range p.Spec.Containers {
		pi.ports = append(pi.ports, c.Ports...)
	}
	for _, c := range p.Spec.InitContainers { // sidecars
		pi.ports = append(pi.ports, c.Ports...)
	}
	return pi
}

// PolicyError is the render error of one NetworkPolicy (its selected pods
// fail closed).
type PolicyError struct {
	Namespace, Name string
	Err             error
}

func (e *PolicyError) Error() string {
	return "policy " + e.Namespace + "/" + e.Name + ": " + e.Err.Error()
}
func (e *PolicyError) Unwrap() error { return e.Err }
