package e2e

import (
	"context"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// checkSubnetLeasesOnly: the manifest's weft-subnet-leases policy lets
// weftd's token (bound to its pod on wl-node1; RBAC grants it every Lease
// in kube-system) write only subnet Leases (weft-subnet-*) that its own
// node holds. Allowed: creating one held by wl-node1 and owned by its Node,
// updating and deleting wl-node1's. Refused with 403: any other Lease
// name, and wl-node2's subnet Lease (update, take over, delete), a new one
// held by or owned by wl-node2, handing wl-node1's to wl-node2. All
// server-side dry runs against Leases the admin stored.
func checkSubnetLeasesOnly(t *testing.T, ctx context.Context, admin, weft kubernetes.Interface) {
	t.Helper()
	nodes := map[string]*corev1.Node{}
	for _, n := range []string{"wl-node1", "wl-node2"} {
		node, err := admin.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nodes[n] = node
	}
	lease := func(name, holder, owner string) *coordinationv1.Lease {
		l := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "kube-system"}, Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}
		if n := nodes[owner]; n != nil {
			l.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: n.Name, UID: n.UID}}
		}
		return l
	}
	stored := map[string]*coordinationv1.Lease{}
	for _, l := range []*coordinationv1.Lease{lease("weft-subnet-e2e-own", "wl-node1", "wl-node1"),
		lease("weft-subnet-e2e-theirs", "wl-node2", "wl-node2"), lease("weft-e2e-not-a-subnet", "wl-node1", "")} {
		s, err := admin.CoordinationV1().Leases("kube-system").Create(ctx, l, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("create Lease %s: %v", l.Name, err)
		}
		stored[l.Name] = s
		defer func() {
			_ = admin.CoordinationV1().Leases("kube-system").Delete(context.WithoutCancel(ctx), l.Name, metav1.DeleteOptions{})
		}()
	}
	leases := weft.CoordinationV1().Leases("kube-system")
	create := func(l *coordinationv1.Lease) func() error {
		return func() error {
			_, err := leases.Create(ctx, l, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		}
	}
	update := func(name string, change func(*coordinationv1.Lease)) func() error {
		return func() error {
			l := stored[name].DeepCopy()
			change(l)
			_, err := leases.Update(ctx, l, metav1.UpdateOptions{DryRun: []string{metav1.DryRunAll}})
			return err
		}
	}
	del := func(name string) func() error {
		return func() error {
			return leases.Delete(ctx, name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		}
	}
	relabel := func(l *coordinationv1.Lease) { l.Labels = map[string]string{"weft.dev/subnet": "true"} }
	holder := func(h string) func(*coordinationv1.Lease) {
		return func(l *coordinationv1.Lease) { l.Spec.HolderIdentity = &h }
	}
	for what, call := range map[string]func() error{
		"create a subnet Lease held by wl-node1, owned by its Node": create(lease("weft-subnet-e2e-new", "wl-node1", "wl-node1")),
		"update wl-node1's subnet Lease":                            update("weft-subnet-e2e-own", relabel),
		"delete wl-node1's subnet Lease":                            del("weft-subnet-e2e-own"),
	} {
		if err := call(); err != nil {
			t.Errorf("as weftd on wl-node1, %s: %v", what, err)
		}
	}
	for what, call := range map[string]func() error{
		"create Lease kube-system/kube-scheduler":                   create(lease("kube-scheduler", "wl-node1", "")),
		"update Lease weft-e2e-not-a-subnet":                        update("weft-e2e-not-a-subnet", relabel),
		"delete Lease weft-e2e-not-a-subnet":                        del("weft-e2e-not-a-subnet"),
		"create a subnet Lease held by wl-node2":                    create(lease("weft-subnet-e2e-new", "wl-node2", "wl-node2")),
		"create a subnet Lease held by wl-node1, owned by wl-node2": create(lease("weft-subnet-e2e-new", "wl-node1", "wl-node2")),
		"update wl-node2's subnet Lease":                            update("weft-subnet-e2e-theirs", relabel),
		"take over wl-node2's subnet Lease":                         update("weft-subnet-e2e-theirs", holder("wl-node1")),
		"hand wl-node1's subnet Lease to wl-node2":                  update("weft-subnet-e2e-own", holder("wl-node2")),
		"delete wl-node2's subnet Lease":                            del("weft-subnet-e2e-theirs"),
	} {
		err := call()
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "weftd may change only") {
			t.Errorf("as weftd on wl-node1, %s: got %v, want 403 from the weft-subnet-leases policy", what, err)
		}
	}
}
