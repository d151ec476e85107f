package agent

import (
	"context"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/daemon/subnet"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/subnetfile"
)

func (h *harness) leaseHolder(p netip.Prefix) string {
	l, err := h.c.CoordinationV1().Leases(subnet.Namespace).Get(context.Background(), subnet.LeaseName(p), metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

func (h *harness) fileSubnet() netip.Prefix {
	f, err := subnetfile.Read(h.opt.SubnetFile)
	if err != nil {
		return netip.Prefix{}
	}
	return f.Subnet
}

// The running agent re-checks its Lease on every sync: a deleted Lease is
// claimed again for the same subnet; one another node took over is given
// up for a free subnet (annotation and subnet file follow); and once the
// controller-manager assigns spec.podCIDR, the Lease is released.
func TestAgentRechecksLease(t *testing.T) {
	ctx := context.Background()
	h := start(t, node("n1", "172.18.0.2", ""), netconf(goodConf))
	h.eventually("ready", h.ready)
	first := netip.MustParsePrefix(h.annotations("n1")[backend.AnnoPodCIDR])
	if h.leaseHolder(first) != "n1" {
		t.Fatalf("no lease for %s", first)
	}
	if err := h.c.CoordinationV1().Leases(subnet.Namespace).Delete(ctx, subnet.LeaseName(first), metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("lease claimed again", func() bool { return h.leaseHolder(first) == "n1" })
	if got := h.annotations("n1")[backend.AnnoPodCIDR]; got != first.String() {
		t.Fatalf("annotation %s after re-claim, want %s", got, first)
	}

	l, err := h.c.CoordinationV1().Leases(subnet.Namespace).Get(ctx, subnet.LeaseName(first), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	other := "n2"
	l.Spec.HolderIdentity = &other
	if _, err := h.c.CoordinationV1().Leases(subnet.Namespace).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("moved off the subnet n2 holds", func() bool {
		a := h.annotations("n1")[backend.AnnoPodCIDR]
		return a != first.String() && a == h.fileSubnet().String()
	})
	moved := netip.MustParsePrefix(h.annotations("n1")[backend.AnnoPodCIDR])
	if h.leaseHolder(moved) != "n1" {
		t.Fatalf("no lease for the new subnet %s", moved)
	}

	n, _ := h.c.CoreV1().Nodes().Get(ctx, "n1", metav1.GetOptions{})
	n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.99.0/24", []string{"10.244.99.0/24"}
	if _, err := h.c.CoreV1().Nodes().Update(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("lease released after moving to spec.podCIDR", func() bool {
		return h.leaseHolder(moved) == "" && h.fileSubnet().String() == "10.244.99.0/24"
	})
}
