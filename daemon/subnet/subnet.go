// Package subnet leases this node's pod subnet.
//
// When the controller-manager allocates node CIDRs (--allocate-node-cidrs,
// as kind does), Node.spec.podCIDR is the subnet. Otherwise weftd allocates
// from the cluster network itself. Annotations on each node's own Node
// object cannot exclude each other across objects, so the claim is a
// coordination.k8s.io Lease in kube-system named after the subnet: creating
// it is linearizable (the second creator gets AlreadyExists), its
// holderIdentity is the node name and an ownerReference to the Node lets
// the garbage collector release it when the Node is deleted. The node then
// records the subnet in its weft.dev/pod-cidr annotation. A restarted
// weftd finds and reuses its own claim.
package subnet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"maps"
	"net/netip"
	"strings"

	coordv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/fabric"
)

// Lease object coordinates.
const (
	Namespace = "kube-system"
	// LabelSubnet marks weft's subnet Lease objects.
	LabelSubnet = "weft.dev/subnet"
	// AnnoSubnet on a Lease holds the CIDR it claims.
	AnnoSubnet = "weft.dev/subnet"
	namePrefix = "weft-subnet-"
)

// Source says where a node's subnet came from.
type Source string

const (
	// FromPodCIDR: Node.spec.podCIDR, assigned by the controller-manager.
	FromPodCIDR Source = "podCIDR"
	// FromLease: a weft subnet Lease held by this node.
	FromLease Source = "lease"
)

// Assignment is this node's pod subnet.
type Assignment struct {
	Subnet netip.Prefix
	Source Source
}

// ErrExhausted means every subnet of the network is taken.
var ErrExhausted = errors.New("no free subnet left in the network")

// Manager leases the subnet of one node.
type Manager struct {
	client kubernetes.Interface
	node   string
	log    *slog.Logger
}

// New returns a manager for node.
func New(client kubernetes.Interface, node string, log *slog.Logger) *Manager {
	return &Manager{client: client, node: node, log: log.With("component", "subnet")}
}

// LeaseName returns the Lease object name that claims subnet.
func LeaseName(subnet netip.Prefix) string {
	s := strings.NewReplacer(".", "-", "/", "-", ":", "-").Replace(subnet.String())
	return namePrefix + s
}

// NodePodCIDR returns the node's IPv4 spec.podCIDR(s) entry, if any.
func NodePodCIDR(n *corev1.Node) netip.Prefix {
	cidrs := n.Spec.PodCIDRs
	if len(cidrs) == 0 && n.Spec.PodCIDR != "" {
		cidrs = []string{n.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		if p, err := netip.ParsePrefix(c); err == nil && p.Addr().Is4() {
			return p.Masked()
		}
	}
	return netip.Prefix{}
}

// Acquire returns this node's subnet inside network, claiming one of
// length subnetLen if the node has none, and records it in the node's
// weft.dev/pod-cidr annotation.
func (m *Manager) Acquire(ctx context.Context, network netip.Prefix, subnetLen int) (Assignment, error) {
	node, err := m.client.CoreV1().Nodes().Get(ctx, m.node, metav1.GetOptions{})
	if err != nil {
		return Assignment{}, fmt.Errorf("get node %s: %w", m.node, err)
	}
	var a Assignment
	if c := NodePodCIDR(node); c.IsValid() {
		if !network.Contains(c.Addr()) || c.Bits() < network.Bits() {
			return Assignment{}, fmt.Errorf("node %s: spec.podCIDR %s is outside the network %s", m.node, c, network)
		}
		a = Assignment{Subnet: c, Source: FromPodCIDR}
	} else {
		s, err := m.claim(ctx, node, network, subnetLen)
		if err != nil {
			return Assignment{}, err
		}
		a = Assignment{Subnet: s, Source: FromLease}
	}
	if _, err := m.Publish(ctx, map[string]string{fabric.AnnoPodCIDR: a.Subnet.String()}); err != nil {
		return Assignment{}, err
	}
	return a, nil
}

func fits(p, network netip.Prefix, subnetLen int) bool {
	return p.IsValid() && p.Bits() == subnetLen && network.Contains(p.Addr()) && p == p.Masked()
}

// claim finds or creates this node's subnet Lease.
func (m *Manager) claim(ctx context.Context, node *corev1.Node, network netip.Prefix, subnetLen int) (netip.Prefix, error) {
	leases := m.client.CoordinationV1().Leases(Namespace)
	list, err := leases.List(ctx, metav1.ListOptions{LabelSelector: LabelSubnet})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list subnet leases: %w", err)
	}
	taken := map[netip.Prefix]bool{}
	var mine []coordv1.Lease
	for _, l := range list.Items {
		p, err := netip.ParsePrefix(l.Annotations[AnnoSubnet])
		if err != nil {
			continue
		}
		taken[p] = true
		if holder(&l) == m.node {
			mine = append(mine, l)
		}
	}
	// Reuse our own claim (annotation first, then any lease we hold that fits).
	want, _ := netip.ParsePrefix(node.Annotations[fabric.AnnoPodCIDR])
	var reuse netip.Prefix
	for _, l := range mine {
		p, _ := netip.ParsePrefix(l.Annotations[AnnoSubnet])
		if fits(p, network, subnetLen) && (!reuse.IsValid() || p == want) {
			reuse = p
		}
	}
	for _, l := range mine {
		p, _ := netip.ParsePrefix(l.Annotations[AnnoSubnet])
		if p != reuse {
			// A claim that no longer fits the network (config changed) or a
			// duplicate left by a crash: release it.
			m.log.Info("releasing stale subnet lease", "subnet", p, "lease", l.Name)
			if err := m.deleteLease(ctx, &l); err != nil {
				return netip.Prefix{}, err
			}
		}
	}
	if reuse.IsValid() {
		m.log.Info("reusing subnet lease", "subnet", reuse)
		return reuse, nil
	}
	// Subnets assigned by the controller-manager to other nodes, and other
	// nodes' annotations, are taken too.
	nodes, err := m.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list nodes: %w", err)
	}
	for _, n := range nodes.Items {
		if c := NodePodCIDR(&n); c.IsValid() {
			taken[c] = true
		}
	}
	total := 1 << (subnetLen - network.Bits())
	start := int(hash(m.node) % uint32(total))
	for pass := range 2 {
		for i := range total {
			p := nth(network, subnetLen, (start+i)%total)
			if pass == 0 && overlapsAny(p, taken) {
				continue
			}
			if pass == 1 && !m.reclaimable(ctx, p, nodes.Items) {
				continue
			}
			ok, err := m.create(ctx, node, p)
			if err != nil {
				return netip.Prefix{}, err
			}
			if ok {
				m.log.Info("claimed subnet", "subnet", p, "lease", LeaseName(p))
				return p, nil
			}
		}
	}
	return netip.Prefix{}, fmt.Errorf("node %s in %s (/%d): %w", m.node, network, subnetLen, ErrExhausted)
}

func holder(l *coordv1.Lease) string {
	if l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func overlapsAny(p netip.Prefix, taken map[netip.Prefix]bool) bool {
	if taken[p] {
		return true
	}
	for t := range taken {
		if t.Overlaps(p) {
			return true
		}
	}
	return false
}

func hash(s string) uint32 {
	h := fnv.New32a()
	_, _ = h.Write([]byte(s))
	return h.Sum32()
}

// nth returns the i-th subnet of length bits in network.
func nth(network netip.Prefix, bits, i int) netip.Prefix {
	a := network.Masked().Addr().As4()
	base := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	v := base + uint32(i)<<(32-bits)
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), bits)
}

// create tries to claim p. false, nil means someone else holds it.
func (m *Manager) create(ctx context.Context, node *corev1.Node, p netip.Prefix) (bool, error) {
	holderID := m.node
	l := &coordv1.Lease{
		ObjectMeta: metav1.ObjectMeta{
			Name:        LeaseName(p),
			Namespace:   Namespace,
			Labels:      map[string]string{LabelSubnet: "true"},
			Annotations: map[string]string{AnnoSubnet: p.String()},
			OwnerReferences: []metav1.OwnerReference{{
				APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID,
			}},
		},
		Spec: coordv1.LeaseSpec{HolderIdentity: &holderID},
	}
	_, err := m.client.CoordinationV1().Leases(Namespace).Create(ctx, l, metav1.CreateOptions{})
	switch {
	case err == nil:
		return true, nil
	case apierrors.IsAlreadyExists(err):
		return false, nil
	default:
		return false, fmt.Errorf("create subnet lease %s: %w", l.Name, err)
	}
}

// reclaimable deletes the lease of p when its holder node no longer exists
// (the garbage collector will do so too, eventually) and reports whether p
// is now free to claim. The delete is conditional on the lease's UID, so
// two nodes racing for it cannot both win.
func (m *Manager) reclaimable(ctx context.Context, p netip.Prefix, nodes []corev1.Node) bool {
	l, err := m.client.CoordinationV1().Leases(Namespace).Get(ctx, LeaseName(p), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return true
	}
	if err != nil {
		return false
	}
	h := holder(l)
	for _, n := range nodes {
		if n.Name == h || NodePodCIDR(&n).Overlaps(p) {
			return false
		}
	}
	m.log.Info("reclaiming subnet of a deleted node", "subnet", p, "holder", h)
	return m.deleteLease(ctx, l) == nil
}

func (m *Manager) deleteLease(ctx context.Context, l *coordv1.Lease) error {
	uid := l.UID
	opts := metav1.DeleteOptions{}
	if uid != "" {
		opts.Preconditions = &metav1.Preconditions{UID: &uid}
	}
	err := m.client.CoordinationV1().Leases(Namespace).Delete(ctx, l.Name, opts)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete subnet lease %s: %w", l.Name, err)
	}
	return nil
}

// Release gives up this node's subnet lease (weftd uninstall) and removes
// the annotations weft published.
func (m *Manager) Release(ctx context.Context) error {
	list, err := m.client.CoordinationV1().Leases(Namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelSubnet})
	if err != nil {
		return fmt.Errorf("list subnet leases: %w", err)
	}
	var errs []error
	for _, l := range list.Items {
		if holder(&l) == m.node {
			errs = append(errs, m.deleteLease(ctx, &l))
		}
	}
	node, err := m.client.CoreV1().Nodes().Get(ctx, m.node, metav1.GetOptions{})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("get node: %w", err))...)
	}
	rm := map[string]*string{}
	for k := range node.Annotations {
		if strings.HasPrefix(k, fabric.AnnoPrefix) {
			rm[k] = nil
		}
	}
	if len(rm) > 0 {
		errs = append(errs, m.patch(ctx, rm))
	}
	return errors.Join(errs...)
}

// Publish merges annotations into this node's Node object, skipping the
// write when they are already there. It reports whether it wrote.
func (m *Manager) Publish(ctx context.Context, annotations map[string]string) (bool, error) {
	node, err := m.client.CoreV1().Nodes().Get(ctx, m.node, metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("get node %s: %w", m.node, err)
	}
	cur := maps.Clone(node.Annotations)
	changed := map[string]*string{}
	for k, v := range annotations {
		if old, ok := cur[k]; !ok || old != v {
			changed[k] = &v
		}
	}
	if len(changed) == 0 {
		return false, nil
	}
	return true, m.patch(ctx, changed)
}

func (m *Manager) patch(ctx context.Context, annotations map[string]*string) error {
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return fmt.Errorf("encode node patch: %w", err)
	}
	if _, err := m.client.CoreV1().Nodes().Patch(ctx, m.node, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("annotate node %s: %w", m.node, err)
	}
	return nil
}
