package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/testutil"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// TestWithWeftPlugin joins the real weft CNI plugin (through libcni, with
// endpointDir) and the production controller wiring in one node namespace:
// the records the plugin writes are what the controller programs, policies
// hold between the pods it wires, and a pod whose Pod object the API does
// not know yet is cut off until it does (isolation before start).
func TestWithWeftPlugin(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	pn := newPluginNode(t, "wp", "weft-policy-"+randSuffix(t), "10.78.0.0/24", dir)
	node, bridge, list, cni := pn.node, pn.bridge, pn.list, pn.cni

	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "t", Labels: map[string]string{"ns": "t"}}}, metav1.CreateOptions{})
	type podNS struct {
		ns   ns.NetNS
		rt   *libcni.RuntimeConf
		ip   string
		veth string
		obj  *corev1.Pod
	}
	pods := map[string]*podNS{}
	for _, name := range []string{"a", "b", "c"} {
		n := testutil.NewNS(t)
		uid := "uid-" + name + randSuffix(t)
		id := fmt.Sprintf("%064x", time.Now().UnixNano()) + name
		id = id[len(id)-64:]
		p := &podNS{ns: n, rt: &libcni.RuntimeConf{ContainerID: id, NetNS: n.Path(), IfName: "eth0", Args: [][2]string{
			{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "t"}, {"K8S_POD_NAME", name}, {"K8S_POD_INFRA_CONTAINER_ID", id}, {"K8S_POD_UID", uid}}}}
		p.obj = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "t", Name: name, UID: types.UID(uid), Labels: map[string]string{"pod": name},
			CreationTimestamp: metav1.Now()}}
		p.veth = podnet.HostVethName(id, "eth0")
		pods[name] = p
	}
	// a and b exist in the API; c is created later.
	for _, name := range []string{"a", "b"} {
		client.CoreV1().Pods("t").Create(ctx, pods[name].obj, metav1.CreateOptions{})
	}
	ctl := runNodeController(t, ctx, cancel, informers.NewSharedInformerFactory(client, 0), NodeOptions{
		NodeName: "n1", NetNS: node.Path(), Bridge: bridge, EndpointDir: dir, ResyncInterval: time.Second})

	for _, name := range []string{"a", "b", "c"} {
		p := pods[name]
		var r *current.Result
		err := node.Do(func(ns.NetNS) error {
			res, err := cni.AddNetworkList(ctx, list, p.rt)
			if err != nil {
				return err
			}
			r, err = current.NewResultFromResult(res)
			return err
		})
		if err != nil {
			t.Fatalf("ADD %s: %v", name, err)
		}
		p.ip = r.IPs[0].Address.IP.String()
		pp := p
		t.Cleanup(func() {
			_ = node.Do(func(ns.NetNS) error { return cni.DelNetworkList(context.Background(), list, pp.rt) })
		})
		serve(t, p.ns, "0.0.0.0:80", name)
	}
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	for _, name := range []string{"a", "b"} {
		if err := ctl.WaitProgrammed(wctx, pods[name].veth); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	if ctl.Programmed(pods["c"].veth) {
		t.Fatal("c programmed before its Pod object exists")
	}
	conn := func(from, to string, want bool) {
		t.Helper()
		if got := probe(t, pods[from].ns, "tcp", pods[to].ip, 80, want); got != want {
			t.Errorf("%s -> %s: connected=%v, want %v", from, to, got, want)
		}
	}
	conn("a", "b", true)
	conn("b", "a", true)
	conn("a", "c", false) // isolation before start
	conn("c", "b", false)

	client.CoreV1().Pods("t").Create(ctx, pods["c"].obj, metav1.CreateOptions{})
	if err := ctl.WaitProgrammed(wctx, pods["c"].veth); err != nil {
		t.Fatal(err)
	}
	conn("a", "c", true)
	conn("c", "b", true)

	client.NetworkingV1().NetworkPolicies("t").Create(ctx, rulestest.WithIngress(rulestest.NP("t", "b-from-a", map[string]string{"pod": "b"}, rulestest.TIn),
		rulestest.In([]networkingv1.NetworkPolicyPeer{{PodSelector: rulestest.LS("pod", "a")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80)))), metav1.CreateOptions{})
	testutil.Eventually(t, "policy programmed", func() bool { return !probeOnce(t, pods["c"].ns, "tcp", pods["b"].ip, 80) })
	conn("a", "b", true)
	conn("c", "b", false)
	conn("b", "c", true)
}

// pluginNode is a node netns where the real weft plugin (with in-process
// weft-ipam) is called through libcni, as a runtime would.
type pluginNode struct {
	node    ns.NetNS
	bridge  string
	dataDir string // weft-ipam's dataDir; the store is dataDir/<network>
	list    *libcni.NetworkConfigList
	cni     *libcni.CNIConfig
}

// newPluginNode builds a node with IP forwarding on and a conflist of one
// weft plugin on a bridge named prefix+random, allocating from subnet;
// endpointDir "" leaves the plugin without policy (a weftd without it).
func newPluginNode(t *testing.T, prefix, network, subnet, endpointDir string) *pluginNode {
	t.Helper()
	pn := &pluginNode{node: testutil.NewNS(t), bridge: prefix + randSuffix(t), dataDir: t.TempDir()}
	plugin := map[string]any{"type": "weft", "bridge": pn.bridge, "isDefaultGateway": true,
		"ipam": map[string]any{"type": "weft-ipam", "ranges": [][]map[string]string{{{"subnet": subnet}}}, "dataDir": pn.dataDir}}
	if endpointDir != "" {
		plugin["endpointDir"] = endpointDir
	}
	conf, err := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": network, "plugins": []any{plugin}})
	if err != nil {
		t.Fatal(err)
	}
	if pn.list, err = libcni.ConfListFromBytes(conf); err != nil {
		t.Fatal(err)
	}
	pn.cni = libcni.NewCNIConfigWithCacheDir([]string{testutil.BinDir(t)}, t.TempDir(), nil)
	sh(t, pn.node.Path(), "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward")
	return pn
}
