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

	"github.com/weftnet/weft/internal/backend"
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
// weft.dev/pod-cidr annotation. A node that has spec.podCIDR gives up any
// subnet Lease it still holds (it moved to controller-manager allocation).
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
		if err := m.releaseLeases(ctx); err != nil {
			return Assignment{}, err
		}
		a = Assignment{Subnet: c, Source: FromPodCIDR}
	} else {
		s, err := m.claim(ctx, node, network, subnetLen)
		if err != nil {
			return Assignment{}, err
		}
		a = Assignment{Subnet: s, Source: FromLease}
	}
	if _, err := m.Publish(ctx, map[string]string{backend.AnnoPodCIDR: a.Subnet.String()}); err != nil {
		return Assignment{}, err
	}
	return a, nil
}

// Ensure is called on every sync with the assignment in use (zero at
// start) and node as the informer sees it. It returns cur when it still
// holds: the same spec.podCIDR, or a Lease for cur that still exists, is
// held by this node and fits network and subnetLen. Otherwise it acquires
// again, re-claiming cur's subnet when it is still free. A node never keeps
// a subnet whose Lease it lost: when re-acquiring fails after a lost Lease,
// Ensure withdraws the node's weft.dev/pod-cidr annotation and returns a
// zero Assignment with the error, so the caller stops using cur. Errors
// that leave the claim unknown (API unreachable) return cur.
func (m *Manager) Ensure(ctx context.Context, node *corev1.Node, network netip.Prefix, subnetLen int, cur Assignment) (Assignment, error) {
	podCIDR := NodePodCIDR(node)
	lost := false
	switch {
	case !cur.Subnet.IsValid():
	case podCIDR.IsValid():
		if cur.Source == FromPodCIDR && cur.Subnet == podCIDR && network.Contains(podCIDR.Addr()) {
			return cur, nil
		}
	case cur.Source == FromLease && fits(cur.Subnet, network, subnetLen):
		held, err := m.Holds(ctx, cur.Subnet)
		if err != nil {
			return cur, err
		}
		if held {
			return cur, nil
		}
		lost = true
		m.log.Warn("subnet lease lost (deleted or held by another node): claiming again", "subnet", cur.Subnet)
	}
	a, err := m.Acquire(ctx, network, subnetLen)
	switch {
	case err == nil:
		return a, nil
	case !lost:
		return cur, err // still ours: keep it until a new claim succeeds
	}
	if werr := m.patch(ctx, map[string]*string{backend.AnnoPodCIDR: nil}); werr != nil {
		err = errors.Join(err, werr)
	}
	return Assignment{}, fmt.Errorf("subnet %s lost and no subnet could be claimed again, stopped advertising it: %w", cur.Subnet, err)
}

// Holds reports whether this node holds the Lease that claims subnet. It
// reads from the API server's cache (resourceVersion "0"): one cheap GET
// per sync; a stale "lost" only costs a full Acquire, which lists quorum.
func (m *Manager) Holds(ctx context.Context, subnet netip.Prefix) (bool, error) {
	l, err := m.client.CoordinationV1().Leases(Namespace).Get(ctx, LeaseName(subnet), metav1.GetOptions{ResourceVersion: "0"})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("get subnet lease %s: %w", LeaseName(subnet), err)
	}
	return holder(l) == m.node && l.DeletionTimestamp == nil && l.Annotations[AnnoSubnet] == subnet.String(), nil
}

func fits(p, network netip.Prefix, subnetLen int) bool {
	return p.IsValid() && p.Bits() == subnetLen && network.Contains(p.Addr()) && p == p.Masked()
}

// claims are the subnet Leases as listed once, by subnet.
type claims map[netip.Prefix]coordv1.Lease

func (m *Manager) listClaims(ctx context.Context) (claims, error) {
	list, err := m.client.CoordinationV1().Leases(Namespace).List(ctx, metav1.ListOptions{LabelSelector: LabelSubnet})
	if err != nil {
		return nil, fmt.Errorf("list subnet leases: %w", err)
	}
	out := claims{}
	for _, l := range list.Items {
		if p, err := netip.ParsePrefix(l.Annotations[AnnoSubnet]); err == nil {
			out[p] = l
		}
	}
	return out, nil
}

// claim finds or creates this node's subnet Lease.
func (m *Manager) claim(ctx context.Context, node *corev1.Node, network netip.Prefix, subnetLen int) (netip.Prefix, error) {
	leases, err := m.listClaims(ctx)
	if err != nil {
		return netip.Prefix{}, err
	}
	want, _ := netip.ParsePrefix(node.Annotations[backend.AnnoPodCIDR])
	if reuse, err := m.reuse(ctx, leases, want, network, subnetLen); err != nil || reuse.IsValid() {
		return reuse, err
	}
	nodes, err := m.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("list nodes: %w", err)
	}
	// Every Lease, spec.podCIDR and other node's weft.dev/pod-cidr
	// annotation is taken, whatever its length: a node whose Lease
	// vanished still routes its annotated subnet.
	taken := map[netip.Prefix]bool{}
	for p := range leases {
		taken[p] = true
	}
	for _, n := range nodes.Items {
		for _, c := range nodeSubnets(&n, m.node) {
			taken[c] = true
		}
	}
	total := 1 << (subnetLen - network.Bits())
	start := int(hash(m.node) % uint32(total))
	candidates := make([]netip.Prefix, 0, total+1)
	if fits(want, network, subnetLen) {
		candidates = append(candidates, want) // keep the subnet pods hold
	}
	for i := range total {
		candidates = append(candidates, nth(network, subnetLen, (start+i)%total))
	}
	for pass := range 2 {
		for _, p := range candidates {
			if pass == 0 && overlapsAny(p, taken) {
				continue
			}
			if pass == 1 && !m.reclaimable(ctx, p, leases, nodes.Items) {
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
			taken[p] = true
		}
	}
	return netip.Prefix{}, fmt.Errorf("node %s in %s (/%d): %w", m.node, network, subnetLen, ErrExhausted)
}

// nodeSubnets returns the subnets node n routes (spec.podCIDR and its
// weft.dev/pod-cidr annotation), unless n is self.
func nodeSubnets(n *corev1.Node, self string) []netip.Prefix {
	if n.Name == self {
		return nil
	}
	var out []netip.Prefix
	if c := NodePodCIDR(n); c.IsValid() {
		out = append(out, c)
	}
	if c, err := netip.ParsePrefix(n.Annotations[backend.AnnoPodCIDR]); err == nil {
		out = append(out, c.Masked())
	}
	return out
}

// reuse returns this node's own claim (the annotated subnet first, then any
// Lease it holds that fits) and releases its other Leases: claims that no
// longer fit (network or subnetLen changed) or duplicates left by a crash.
func (m *Manager) reuse(ctx context.Context, leases claims, want, network netip.Prefix, subnetLen int) (netip.Prefix, error) {
	var reuse netip.Prefix
	for p, l := range leases {
		if holder(&l) == m.node && fits(p, network, subnetLen) && (!reuse.IsValid() || p == want) {
			reuse = p
		}
	}
	for p, l := range leases {
		if holder(&l) == m.node && p != reuse {
			m.log.Info("releasing stale subnet lease", "subnet", p, "lease", l.Name)
			if err := m.deleteLease(ctx, &l); err != nil {
				return netip.Prefix{}, err
			}
			delete(leases, p)
		}
	}
	if reuse.IsValid() {
		m.log.Info("reusing subnet lease", "subnet", reuse)
	}
	return reuse, nil
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

// create tries to claim p. false, nil means someone else holds p or an
// overlapping subnet.
//
// Lease names exclude only equal subnets: a claim of another length (after
// subnetLen changed) can overlap under another name. So after creating its
// Lease a node lists the claims again and backs off when any overlapping
// Lease of another holder exists. Of two racing creators the later lister
// sees the other's Lease, so at most one keeps an overlapping claim (both
// backing off is safe: they move on to other subnets).
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
	created, err := m.client.CoordinationV1().Leases(Namespace).Create(ctx, l, metav1.CreateOptions{})
	switch {
	case err == nil:
	case apierrors.IsAlreadyExists(err):
		return false, nil
	default:
		return false, fmt.Errorf("create subnet lease %s: %w", l.Name, err)
	}
	leases, err := m.listClaims(ctx)
	if err != nil {
		return false, errors.Join(err, m.deleteLease(ctx, created))
	}
	for q, other := range leases {
		if q != p && q.Overlaps(p) && holder(&other) != m.node {
			m.log.Info("subnet overlaps another node's claim, backing off", "subnet", p, "other", q, "holder", holder(&other))
			return false, m.deleteLease(ctx, created)
		}
	}
	return true, nil
}

// reclaimable deletes the Leases overlapping p whose holder node no longer
// exists (the garbage collector will do so too, eventually) and reports
// whether p is now free to claim: no existing node holds a Lease, a
// spec.podCIDR or an annotated subnet overlapping it. Deletes are
// conditional on the Lease's UID, so two nodes racing cannot both win.
func (m *Manager) reclaimable(ctx context.Context, p netip.Prefix, leases claims, nodes []corev1.Node) bool {
	live := map[string]bool{}
	for _, n := range nodes {
		live[n.Name] = true
		for _, c := range nodeSubnets(&n, m.node) {
			if c.Overlaps(p) {
				return false
			}
		}
	}
	var orphans []coordv1.Lease
	for q, l := range leases {
		if !q.Overlaps(p) {
			continue
		}
		if live[holder(&l)] {
			return false
		}
		orphans = append(orphans, l)
	}
	for _, l := range orphans {
		m.log.Info("reclaiming subnet of a deleted node", "subnet", l.Annotations[AnnoSubnet], "holder", holder(&l))
		if err := m.deleteLease(ctx, &l); err != nil {
			// The manifest's weft-subnet-leases policy refuses a weftd the
			// delete of another node's Lease; the garbage collector removes
			// it with its Node (ownerReference), and a later claim finds it free.
			m.log.Info("subnet of a deleted node not reclaimed: it is free once its Lease is collected with the Node", "subnet", l.Annotations[AnnoSubnet], "holder", holder(&l), "err", err)
			return false
		}
	}
	return true
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

// releaseLeases deletes every subnet Lease this node holds.
func (m *Manager) releaseLeases(ctx context.Context) error {
	leases, err := m.listClaims(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for p, l := range leases {
		if holder(&l) == m.node {
			m.log.Info("releasing subnet lease", "subnet", p, "lease", l.Name)
			errs = append(errs, m.deleteLease(ctx, &l))
		}
	}
	return errors.Join(errs...)
}

// Release gives up this node's subnet lease (weftd uninstall) and removes
// the annotations weft published.
func (m *Manager) Release(ctx context.Context) error {
	errs := []error{m.releaseLeases(ctx)}
	node, err := m.client.CoreV1().Nodes().Get(ctx, m.node, metav1.GetOptions{})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("get node: %w", err))...)
	}
	rm := map[string]*string{}
	for k := range node.Annotations {
		if strings.HasPrefix(k, backend.AnnoPrefix) {
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
