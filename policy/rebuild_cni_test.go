package policy

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
)

// diskAttachments reads a weft-ipam disk store (weftd's own adapter lives in
// cmd/weftd, which a test cannot import).
type diskAttachments struct{ s *disk.Store }

func (d diskAttachments) Attachments(ctx context.Context) ([]Attachment, error) {
	var out []Attachment
	err := d.s.View(ctx, func(st *store.State) error {
		for _, a := range st.Allocations {
			out = append(out, Attachment{ContainerID: a.ContainerID, IfName: a.IfName, IPs: []netip.Addr{a.IP}})
		}
		return nil
	})
	return out, err
}

// TestRebuildAfterUpgrade: pods wired by the real plugin while weftd ran
// without policy (no endpoint records), then weftd starts with policy.
// Their records are rebuilt from the IPAM store, the veth names and the Pod
// objects before the first sync, so traffic keeps flowing; an attachment
// no Pod on this node claims stays cut off (fail closed).
func TestRebuildAfterUpgrade(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	netName := "weft-rebuild-" + randSuffix(t)
	pn := newPluginNode(t, "wr", netName, "10.79.0.0/24", "") // a weftd without policy: no endpointDir
	node, bridge, list, cni, dataDir := pn.node, pn.bridge, pn.list, pn.cni, pn.dataDir
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t"}}, metav1.CreateOptions{})

	type podNS struct {
		ns   ns.NetNS
		ip   string
		veth string
	}
	pods := map[string]*podNS{}
	for _, name := range []string{"a", "b", "orphan"} {
		n := testutil.NewNS(t)
		id := fmt.Sprintf("%064x", time.Now().UnixNano()) + name
		id = id[len(id)-64:]
		rt := &libcni.RuntimeConf{ContainerID: id, NetNS: n.Path(), IfName: "eth0", Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "t"}, {"K8S_POD_NAME", name}, {"K8S_POD_UID", "uid-" + name}}}
		var r *current.Result
		err := node.Do(func(ns.NetNS) error {
			res, err := cni.AddNetworkList(ctx, list, rt)
			if err == nil {
				r, err = current.NewResultFromResult(res)
			}
			return err
		})
		if err != nil {
			t.Fatalf("ADD %s: %v", name, err)
		}
		t.Cleanup(func() {
			_ = node.Do(func(ns.NetNS) error { return cni.DelNetworkList(context.Background(), list, rt) })
		})
		p := &podNS{ns: n, ip: r.IPs[0].Address.IP.String(), veth: podnet.HostVethName(id, "eth0")}
		pods[name] = p
		serve(t, n, "0.0.0.0:80", name)
		if name == "orphan" {
			continue // no Pod object claims this attachment
		}
		client.CoreV1().Pods("t").Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "t", Name: name, UID: types.UID("uid-" + name), CreationTimestamp: metav1.Now()},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: p.ip, PodIPs: []corev1.PodIP{{IP: p.ip}}},
		}, metav1.CreateOptions{})
	}
	if eps, _ := endpoint.List(dir); len(eps) != 0 {
		t.Fatalf("records before the upgrade: %+v", eps)
	}

	// weftd with policy starts.
	ctl := runNodeController(t, ctx, cancel, informers.NewSharedInformerFactory(client, 0), NodeOptions{
		NodeName: "n1", NetNS: node.Path(), Bridge: bridge, EndpointDir: dir, ResyncInterval: time.Second,
		Attachments: diskAttachments{disk.New(filepath.Join(dataDir, netName), disk.Options{})}})
	testutil.Eventually(t, "first sync", func() bool { ok, _ := ctl.Healthy(); return ok })
	// The first sync already carries the rebuilt records: no window of drops.
	if got := probeOnce(t, pods["a"].ns, "tcp", pods["b"].ip, 80); !got {
		t.Errorf("a -> b dropped after weftd's first sync")
	}
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	for _, name := range []string{"a", "b"} {
		if err := ctl.WaitProgrammed(wctx, pods[name].veth); err != nil {
			t.Fatalf("%s after the upgrade: %v", name, err)
		}
	}
	eps, _ := endpoint.List(dir)
	if len(eps) != 2 {
		t.Fatalf("rebuilt records %+v, want a and b", eps)
	}
	for _, ep := range eps {
		if ep.PodNamespace != "t" || ep.PodUID != "uid-"+ep.PodName || ep.HostVeth != pods[ep.PodName].veth || ep.IPs[0] != pods[ep.PodName].ip {
			t.Errorf("rebuilt record %+v", ep)
		}
	}
	conn := func(from, to string, want bool) {
		t.Helper()
		if got := probe(t, pods[from].ns, "tcp", pods[to].ip, 80, want); got != want {
			t.Errorf("%s -> %s: connected=%v, want %v", from, to, got, want)
		}
	}
	conn("a", "b", true)
	conn("b", "a", true)
	conn("orphan", "a", false)
	conn("a", "orphan", false)
}
