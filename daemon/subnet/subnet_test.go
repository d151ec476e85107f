package subnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/backend"
)

var network = netip.MustParsePrefix("10.244.0.0/16")

func mkNode(name, podCIDR string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, UID: types.UID("uid-" + name)}}
	if podCIDR != "" {
		n.Spec.PodCIDR = podCIDR
		n.Spec.PodCIDRs = []string{podCIDR}
	}
	return n
}

func annotation(t *testing.T, c *fake.Clientset, node, key string) string {
	t.Helper()
	n, err := c.CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n.Annotations[key]
}

func TestUsesSpecPodCIDR(t *testing.T) {
	c := fake.NewClientset(mkNode("n1", "10.244.7.0/24"))
	a, err := New(c, "n1", slog.Default()).Acquire(context.Background(), network, 24)
	if err != nil || a.Subnet != netip.MustParsePrefix("10.244.7.0/24") || a.Source != FromPodCIDR {
		t.Fatalf("got %+v %v", a, err)
	}
	if got := annotation(t, c, "n1", backend.AnnoPodCIDR); got != "10.244.7.0/24" {
		t.Fatalf("annotation %q", got)
	}
	leases, _ := c.CoordinationV1().Leases(Namespace).List(context.Background(), metav1.ListOptions{})
	if len(leases.Items) != 0 {
		t.Fatalf("podCIDR node created leases: %v", leases.Items)
	}
	// A podCIDR outside the network is an error, not silently used.
	c2 := fake.NewClientset(mkNode("n1", "10.99.7.0/24"))
	if _, err := New(c2, "n1", slog.Default()).Acquire(context.Background(), network, 24); err == nil {
		t.Fatal("accepted a podCIDR outside the network")
	}
}

func TestClaimAndReuse(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset(mkNode("n1", ""), mkNode("n2", "10.244.0.0/24"))
	m := New(c, "n1", slog.Default())
	a, err := m.Acquire(ctx, network, 24)
	if err != nil || a.Source != FromLease || !network.Contains(a.Subnet.Addr()) || a.Subnet.Bits() != 24 {
		t.Fatalf("claim %+v %v", a, err)
	}
	if a.Subnet == netip.MustParsePrefix("10.244.0.0/24") {
		t.Fatal("claimed another node's spec.podCIDR")
	}
	l, err := c.CoordinationV1().Leases(Namespace).Get(ctx, LeaseName(a.Subnet), metav1.GetOptions{})
	if err != nil || *l.Spec.HolderIdentity != "n1" || l.OwnerReferences[0].Kind != "Node" || l.OwnerReferences[0].UID != "uid-n1" {
		t.Fatalf("lease %+v %v", l, err)
	}
	if annotation(t, c, "n1", backend.AnnoPodCIDR) != a.Subnet.String() {
		t.Fatal("annotation not written")
	}
	// Restart: same subnet, no new lease.
	b, err := New(c, "n1", slog.Default()).Acquire(ctx, network, 24)
	if err != nil || b.Subnet != a.Subnet {
		t.Fatalf("reuse: %+v %v", b, err)
	}
	// Crash between lease create and annotation: the lease is still found.
	patchAnno(t, c, "n1", backend.AnnoPodCIDR, nil)
	b, err = New(c, "n1", slog.Default()).Acquire(ctx, network, 24)
	if err != nil || b.Subnet != a.Subnet {
		t.Fatalf("reuse without annotation: %+v %v", b, err)
	}
	leases, _ := c.CoordinationV1().Leases(Namespace).List(ctx, metav1.ListOptions{})
	if len(leases.Items) != 1 {
		t.Fatalf("%d leases, want 1", len(leases.Items))
	}
	// Network changed: the old claim is released and a fitting one made.
	other := netip.MustParsePrefix("10.250.0.0/16")
	b, err = New(c, "n1", slog.Default()).Acquire(ctx, other, 26)
	if err != nil || !other.Contains(b.Subnet.Addr()) || b.Subnet.Bits() != 26 {
		t.Fatalf("after network change: %+v %v", b, err)
	}
	leases, _ = c.CoordinationV1().Leases(Namespace).List(ctx, metav1.ListOptions{})
	if len(leases.Items) != 1 || leases.Items[0].Name != LeaseName(b.Subnet) {
		t.Fatalf("leases after change: %v", leases.Items)
	}
	// Release removes the lease and the annotations.
	if err := New(c, "n1", slog.Default()).Release(ctx); err != nil {
		t.Fatal(err)
	}
	leases, _ = c.CoordinationV1().Leases(Namespace).List(ctx, metav1.ListOptions{})
	if len(leases.Items) != 0 || annotation(t, c, "n1", backend.AnnoPodCIDR) != "" {
		t.Fatalf("release left %v", leases.Items)
	}
}

func patchAnno(t *testing.T, c *fake.Clientset, node, k string, v *string) {
	t.Helper()
	m := New(c, node, slog.Default())
	if err := m.patch(context.Background(), map[string]*string{k: v}); err != nil {
		t.Fatal(err)
	}
}

// TestConcurrentNodes races many nodes for the subnets of a small network:
// every node that gets one gets a distinct one, and exactly as many as
// exist are handed out.
func TestConcurrentNodes(t *testing.T) {
	for _, tc := range []struct {
		network string
		nodes   int
	}{{"10.244.0.0/20", 16}, {"10.244.0.0/20", 24}, {"10.244.0.0/16", 64}} {
		t.Run(fmt.Sprintf("%s-%d", tc.network, tc.nodes), func(t *testing.T) {
			nw := netip.MustParsePrefix(tc.network)
			total := 1 << (24 - nw.Bits())
			c := fake.NewClientset()
			for i := range tc.nodes {
				if _, err := c.CoreV1().Nodes().Create(context.Background(), mkNode(fmt.Sprintf("n%d", i), ""), metav1.CreateOptions{}); err != nil {
					t.Fatal(err)
				}
			}
			var wg sync.WaitGroup
			got := make([]netip.Prefix, tc.nodes)
			errs := make([]error, tc.nodes)
			for i := range tc.nodes {
				wg.Go(func() {
					a, err := New(c, fmt.Sprintf("n%d", i), slog.Default()).Acquire(context.Background(), nw, 24)
					got[i], errs[i] = a.Subnet, err
				})
			}
			wg.Wait()
			seen := map[netip.Prefix]int{}
			ok := 0
			for i := range tc.nodes {
				if errs[i] != nil {
					if !errors.Is(errs[i], ErrExhausted) {
						t.Fatalf("n%d: %v", i, errs[i])
					}
					continue
				}
				ok++
				if j, dup := seen[got[i]]; dup {
					t.Fatalf("n%d and n%d both hold %s", i, j, got[i])
				}
				seen[got[i]] = i
				if annotation(t, c, fmt.Sprintf("n%d", i), backend.AnnoPodCIDR) != got[i].String() {
					t.Fatalf("n%d annotation mismatch", i)
				}
			}
			if want := min(tc.nodes, total); ok != want {
				t.Fatalf("%d nodes got subnets, want %d", ok, want)
			}
		})
	}
}

func TestReclaimFromDeletedNode(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset(mkNode("gone", ""), mkNode("n1", ""))
	nw := netip.MustParsePrefix("10.244.0.0/24")
	a, err := New(c, "gone", slog.Default()).Acquire(ctx, nw, 25)
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(c, "n1", slog.Default()).Acquire(ctx, nw, 25)
	if err != nil || b.Subnet == a.Subnet {
		t.Fatalf("second node: %+v %v", b, err)
	}
	// Full now: a third node finds nothing until "gone" is deleted (the fake
	// has no garbage collector, so weftd reclaims the orphaned lease).
	if _, err := c.CoreV1().Nodes().Create(ctx, mkNode("n2", ""), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(c, "n2", slog.Default()).Acquire(ctx, nw, 25); !errors.Is(err, ErrExhausted) {
		t.Fatalf("full network: %v", err)
	}
	if err := c.CoreV1().Nodes().Delete(ctx, "gone", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	d, err := New(c, "n2", slog.Default()).Acquire(ctx, nw, 25)
	if err != nil || d.Subnet != a.Subnet {
		t.Fatalf("reclaim: %+v %v", d, err)
	}
}

func TestPublishSkipsUnchanged(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset(mkNode("n1", ""))
	m := New(c, "n1", slog.Default())
	anno := map[string]string{backend.AnnoPublicIP: "172.18.0.2", backend.AnnoBackends: "vxlan"}
	if wrote, err := m.Publish(ctx, anno); err != nil || !wrote {
		t.Fatal(wrote, err)
	}
	n := len(c.Actions())
	if wrote, err := m.Publish(ctx, anno); err != nil || wrote {
		t.Fatal(wrote, err)
	}
	for _, a := range c.Actions()[n:] {
		if a.GetVerb() == "patch" {
			t.Fatal("unchanged annotations were patched again")
		}
	}
	if annotation(t, c, "n1", backend.AnnoPublicIP) != "172.18.0.2" {
		t.Fatal("not published")
	}
}

func TestNth(t *testing.T) {
	if got := nth(netip.MustParsePrefix("10.244.0.0/16"), 24, 255); got != netip.MustParsePrefix("10.244.255.0/24") {
		t.Fatal(got)
	}
	if got := nth(netip.MustParsePrefix("10.0.0.0/8"), 26, 5); got != netip.MustParsePrefix("10.0.1.64/26") {
		t.Fatal(got)
	}
	if LeaseName(netip.MustParsePrefix("10.244.3.0/24")) != "weft-subnet-10-244-3-0-24" {
		t.Fatal(LeaseName(netip.MustParsePrefix("10.244.3.0/24")))
	}
}

func leaseNames(t *testing.T, c *fake.Clientset) map[string]string {
	t.Helper()
	list, err := c.CoordinationV1().Leases(Namespace).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, l := range list.Items {
		out[l.Annotations[AnnoSubnet]] = holder(&l)
	}
	return out
}

// TestAnnotatedSubnetIsTaken: a node that routes an annotated subnet but
// holds no Lease for it (lost, or written by hand) keeps it: nobody else
// claims it, in either pass.
func TestAnnotatedSubnetIsTaken(t *testing.T) {
	ctx := context.Background()
	nw := netip.MustParsePrefix("10.244.0.0/23")
	old := mkNode("old", "")
	old.Annotations = map[string]string{backend.AnnoPodCIDR: "10.244.0.0/24"}
	c := fake.NewClientset(old, mkNode("n1", ""), mkNode("n2", ""))
	a, err := New(c, "n1", slog.Default()).Acquire(ctx, nw, 24)
	if err != nil || a.Subnet != netip.MustParsePrefix("10.244.1.0/24") {
		t.Fatalf("n1: %+v %v, want the one subnet nobody annotates", a, err)
	}
	if b, err := New(c, "n2", slog.Default()).Acquire(ctx, nw, 24); !errors.Is(err, ErrExhausted) {
		t.Fatalf("n2 claimed %+v (%v) although 'old' annotates 10.244.0.0/24", b, err)
	}
}

// TestEnsureRechecksLease: a sync notices a Lease that vanished or changed
// holder. A vanished Lease is claimed again for the same subnet (its pods
// keep their addresses); one another node holds is never kept: the node
// moves to a free subnet, or withdraws its annotation when none is left.
func TestEnsureRechecksLease(t *testing.T) {
	ctx := context.Background()
	nw := netip.MustParsePrefix("10.244.0.0/23")
	c := fake.NewClientset(mkNode("n1", ""), mkNode("n2", ""))
	m := New(c, "n1", slog.Default())
	getNode := func(name string) *corev1.Node {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	cur, err := m.Ensure(ctx, getNode("n1"), nw, 24, Assignment{})
	if err != nil || cur.Source != FromLease {
		t.Fatalf("first: %+v %v", cur, err)
	}
	// Held: nothing changes.
	if got, err := m.Ensure(ctx, getNode("n1"), nw, 24, cur); err != nil || got != cur {
		t.Fatalf("held: %+v %v", got, err)
	}
	// Vanished (deleted by hand, or by the garbage collector after the Node
	// object was recreated): claimed again, same subnet.
	if err := c.CoordinationV1().Leases(Namespace).Delete(ctx, LeaseName(cur.Subnet), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if got, err := m.Ensure(ctx, getNode("n1"), nw, 24, cur); err != nil || got != cur {
		t.Fatalf("after the lease vanished: %+v %v, want %+v again", got, err, cur)
	}
	if h := leaseNames(t, c)[cur.Subnet.String()]; h != "n1" {
		t.Fatalf("lease of %s held by %q after re-claim", cur.Subnet, h)
	}
	// Taken over by n2 (its lease now): n1 moves to the other subnet.
	holderN2 := "n2"
	l, _ := c.CoordinationV1().Leases(Namespace).Get(ctx, LeaseName(cur.Subnet), metav1.GetOptions{})
	l.Spec.HolderIdentity = &holderN2
	if _, err := c.CoordinationV1().Leases(Namespace).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	patchAnno(t, c, "n2", backend.AnnoPodCIDR, ptr(cur.Subnet.String()))
	moved, err := m.Ensure(ctx, getNode("n1"), nw, 24, cur)
	if err != nil || moved.Subnet == cur.Subnet || !moved.Subnet.IsValid() {
		t.Fatalf("after n2 took the lease: %+v %v", moved, err)
	}
	if annotation(t, c, "n1", backend.AnnoPodCIDR) != moved.Subnet.String() {
		t.Fatal("annotation not moved")
	}
	// n2 takes that one too and nothing is left: n1 stops advertising.
	l, _ = c.CoordinationV1().Leases(Namespace).Get(ctx, LeaseName(moved.Subnet), metav1.GetOptions{})
	l.Spec.HolderIdentity = &holderN2
	if _, err := c.CoordinationV1().Leases(Namespace).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	got, err := m.Ensure(ctx, getNode("n1"), nw, 24, moved)
	if !errors.Is(err, ErrExhausted) || got.Subnet.IsValid() {
		t.Fatalf("nothing left: %+v %v, want a zero assignment and ErrExhausted", got, err)
	}
	if a := annotation(t, c, "n1", backend.AnnoPodCIDR); a != "" {
		t.Fatalf("n1 still advertises %q", a)
	}
}

func ptr(s string) *string { return &s }

// TestMoveToPodCIDRReleasesLease: once the controller-manager assigns
// spec.podCIDR, the node's Lease is given back.
func TestMoveToPodCIDRReleasesLease(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset(mkNode("n1", ""))
	m := New(c, "n1", slog.Default())
	n, _ := c.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	cur, err := m.Ensure(ctx, n, network, 24, Assignment{})
	if err != nil || len(leaseNames(t, c)) != 1 {
		t.Fatalf("claim: %+v %v %v", cur, err, leaseNames(t, c))
	}
	for _, podCIDR := range []string{cur.Subnet.String(), "10.244.200.0/24"} {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, []string{podCIDR}
		if _, err := c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		got, err := m.Ensure(ctx, n, network, 24, cur)
		if err != nil || got.Source != FromPodCIDR || got.Subnet.String() != podCIDR {
			t.Fatalf("podCIDR %s: %+v %v", podCIDR, got, err)
		}
		if l := leaseNames(t, c); len(l) != 0 {
			t.Fatalf("podCIDR %s: leases left %v", podCIDR, l)
		}
		cur = Assignment{Subnet: cur.Subnet, Source: FromLease}
	}
}

// TestSubnetLenChangeNeverOverlaps: after subnetLen changes, nodes still on
// the old length hold Leases under other names; no new claim may overlap
// them, also when the network looks full (the reclaim pass) and when two
// nodes race with different lengths.
func TestSubnetLenChangeNeverOverlaps(t *testing.T) {
	ctx := context.Background()
	nw := netip.MustParsePrefix("10.244.0.0/23")
	c := fake.NewClientset(mkNode("a", ""), mkNode("b", ""), mkNode("c", ""), mkNode("d", ""))
	if _, err := New(c, "a", slog.Default()).Acquire(ctx, nw, 24); err != nil {
		t.Fatal(err)
	}
	// The config moves to /25: the other /24 splits into two /25 claims.
	var got []netip.Prefix
	for _, n := range []string{"b", "c", "d"} {
		a, err := New(c, n, slog.Default()).Acquire(ctx, nw, 25)
		if err == nil {
			got = append(got, a.Subnet)
		} else if !errors.Is(err, ErrExhausted) {
			t.Fatal(err)
		}
	}
	assertDisjoint(t, c)
	if len(got) != 2 {
		t.Fatalf("/25 claims %v, want 2 (the half 'a' does not hold)", got)
	}

	// Racing lengths: many nodes, half on /24, half on /26, in a network
	// that cannot hold them all.
	for round := range 20 {
		c := fake.NewClientset()
		var wg sync.WaitGroup
		for i := range 8 {
			name := fmt.Sprintf("n%d", i)
			if _, err := c.CoreV1().Nodes().Create(ctx, mkNode(name, ""), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			wg.Go(func() {
				if _, err := New(c, name, slog.Default()).Acquire(ctx, nw, 24+2*(i%2)); err != nil && !errors.Is(err, ErrExhausted) {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		if !assertDisjoint(t, c) {
			t.Fatalf("round %d", round)
		}
	}
}

func assertDisjoint(t *testing.T, c *fake.Clientset) bool {
	t.Helper()
	var ps []netip.Prefix
	for s := range leaseNames(t, c) {
		ps = append(ps, netip.MustParsePrefix(s))
	}
	for i := range ps {
		for j := range i {
			if ps[i].Overlaps(ps[j]) {
				t.Errorf("overlapping claims %s and %s (all: %v)", ps[i], ps[j], leaseNames(t, c))
				return false
			}
		}
	}
	return true
}
