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

	"github.com/weftnet/weft/internal/fabric"
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
	if got := annotation(t, c, "n1", fabric.AnnoPodCIDR); got != "10.244.7.0/24" {
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
	if annotation(t, c, "n1", fabric.AnnoPodCIDR) != a.Subnet.String() {
		t.Fatal("annotation not written")
	}
	// Restart: same subnet, no new lease.
	b, err := New(c, "n1", slog.Default()).Acquire(ctx, network, 24)
	if err != nil || b.Subnet != a.Subnet {
		t.Fatalf("reuse: %+v %v", b, err)
	}
	// Crash between lease create and annotation: the lease is still found.
	patchAnno(t, c, "n1", fabric.AnnoPodCIDR, nil)
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
	if len(leases.Items) != 0 || annotation(t, c, "n1", fabric.AnnoPodCIDR) != "" {
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
				if annotation(t, c, fmt.Sprintf("n%d", i), fabric.AnnoPodCIDR) != got[i].String() {
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
	anno := map[string]string{fabric.AnnoPublicIP: "172.18.0.2", fabric.AnnoBackends: "vxlan"}
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
	if annotation(t, c, "n1", fabric.AnnoPublicIP) != "172.18.0.2" {
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
