package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/testutil"
)

// The topology hack/localcluster builds with --subnets 2 --bgp-router
// (kept literal: the test checks the harness from outside too).
const (
	topoNodes   = 5
	subnetLabel = "e2e.weft.dev/subnet"
	torASN      = 65001
	torPassword = "weft-e2e-tor"
	torIPA      = "172.18.0.253"
	torIPB      = "172.19.0.253"
	extServer   = "203.0.113.10"
	extNet      = "203.0.113.0/24"
	torOther    = "198.51.100.0/24"
	bgpSecret   = "weft-bgp-passwords"
	ipipDev     = "weft.ipip"
)

// topo is the cluster of TestBGPTopology.
type topo struct {
	c      kubernetes.Interface
	nodes  []*corev1.Node
	pods   map[string]corev1.Pod // by node
	remote []pair
	netns  string
	bgp    string // net-conf.json with the bgp section
}

// TestBGPTopology is issue 10's end-to-end check of what needs more than
// TestVXLANMesh's three nodes on one link: five nodes on two underlay
// subnets joined by a router, bird2 as an external router with a leg on
// each. One cluster, one pod per node, all cases in turn on the bgp
// backend with ipipMode CrossSubnet: IP-in-IP exactly across the router;
// bird2 learns every pod CIDR and its accepted prefix carries pods to a
// server behind it; peers with the wrong AS or password get no session,
// a lying in-cluster speaker gets its routes refused; a weftd restart
// during a stream withdraws nothing; one reflector with four clients,
// then moved to another node, with connectivity measured throughout.
func TestBGPTopology(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("bird"); err != nil {
		t.Fatalf("bird2 is not installed (make deps, or apt-get install -y bird2): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	upFresh(t, ctx, "up", "--nodes", fmt.Sprint(topoNodes), "--subnets", "2", "--bgp-router", "--cni", "manifest")
	tp := &topo{c: adminClient(t), pods: map[string]corev1.Pod{}}
	tp.nodes = waitMesh(t, ctx, tp.c, topoNodes, 3*time.Minute)
	for _, n := range tp.nodes {
		patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, subnetLabel, subnetOf(n))
		if _, err := tp.c.CoreV1().Nodes().Patch(ctx, n.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	tp.startPods(t, ctx)
	tp.createSecret(t, ctx)
	cm, err := tp.c.CoreV1().ConfigMaps("kube-system").Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	setBackend(t, ctx, tp.c, cm.Data["net-conf.json"], tp.section())
	start := time.Now()
	tp.waitSessions(t, ctx, func(n *corev1.Node) []*corev1.Node { return others(tp.nodes, n.Name) }, 2*time.Minute)
	t.Logf("bgp CrossSubnet with bird2 established and routed after %s", time.Since(start).Round(time.Millisecond))

	t.Run("CrossSubnet: IP-in-IP only across the router", func(t *testing.T) { tp.checkCrossSubnet(t, ctx) })
	t.Run("bird2 as the external peer", func(t *testing.T) { tp.checkBird(t, ctx) })
	t.Run("bad peers get no session or no route", func(t *testing.T) { tp.checkBadPeers(t, ctx) })
	t.Run("weftd restart during a stream withdraws nothing", func(t *testing.T) { tp.checkRestart(t, ctx) })
	t.Run("route reflector with four clients, moved", func(t *testing.T) { tp.checkReflectorMove(t, ctx) })
}

// subnetOf is "a" for the first underlay subnet (172.18/16), "b" for the
// second.
func subnetOf(n *corev1.Node) string {
	if strings.HasPrefix(internalIP(n), "172.19.") {
		return "b"
	}
	return "a"
}

func sameSubnet(a, b *corev1.Node) bool { return subnetOf(a) == subnetOf(b) }

// torIP is the BGP router's address on n's subnet.
func torIP(n *corev1.Node) string {
	if subnetOf(n) == "b" {
		return torIPB
	}
	return torIPA
}

func (tp *topo) startPods(t *testing.T, ctx context.Context) {
	tp.netns = fmt.Sprintf("bgptopo-%06x", rand.IntN(1<<24))
	if _, err := tp.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: tp.netns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.c.CoreV1().Namespaces().Delete(context.Background(), tp.netns, metav1.DeleteOptions{}) })
	for i, n := range tp.nodes {
		if _, err := tp.c.CoreV1().Pods(tp.netns).Create(ctx, echoPod(fmt.Sprintf("t%d", i+1), n.Name), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if err := waitFor(ctx, 3*time.Minute, func() (bool, error) {
		list, err := tp.c.CoreV1().Pods(tp.netns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				tp.pods[p.Spec.NodeName] = p
			}
		}
		return len(tp.pods) == topoNodes, fmt.Errorf("%d pods running", len(tp.pods))
	}); err != nil {
		dumpEvents(t, ctx, tp.c, tp.netns)
		t.Fatal(err)
	}
	for _, a := range tp.nodes {
		for _, b := range others(tp.nodes, a.Name) {
			tp.remote = append(tp.remote, pair{tp.pods[a.Name], tp.pods[b.Name]})
		}
	}
}

// createSecret holds the TCP-MD5 passwords: the router's, and a wrong one.
func (tp *topo) createSecret(t *testing.T, ctx context.Context) {
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: bgpSecret, Namespace: "kube-system"},
		StringData: map[string]string{"tor": torPassword, "wrong": "not-the-password"}}
	_, err := tp.c.CoreV1().Secrets("kube-system").Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) { // a kept cluster (WEFT_E2E_KEEP)
		_, err = tp.c.CoreV1().Secrets("kube-system").Update(ctx, sec, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// section is the bgp backend section: CrossSubnet, the router on each
// subnet (with its password, accepting the test network only), and the
// two bad external peers of checkBadPeers on subnet a.
func (tp *topo) section() string {
	peer := func(ip string, asn int, key, subnet, accepted string) string {
		pw := ""
		if key != "" {
			pw = fmt.Sprintf(`,"passwordSecretRef":{"name":%q,"key":%q}`, bgpSecret, key)
		}
		return fmt.Sprintf(`{"peerIP":%q,"asNumber":%d%s,"nodeSelector":{%q:%q},"acceptedPrefixes":[%q]}`,
			ip, asn, pw, subnetLabel, subnet, accepted)
	}
	return `{"type":"bgp","ipipMode":"CrossSubnet","peers":[` + strings.Join([]string{
		peer(torIPA, torASN, "tor", "a", extNet),
		peer(torIPB, torASN, "tor", "b", extNet),
		peer(badASIP, badASConfigured, "", "a", badASNet),
		peer(badPWIP, badPWASN, "wrong", "a", badPWNet),
	}, ",") + `]}`
}

// bgpView is one node's bgp line of /readyz.
type bgpView struct {
	mode     string
	sessions map[string]string // peer address -> state
	rejected int
}

var bgpLine = regexp.MustCompile(`info: bgp: ipipMode (\S+)[^;]*; sessions \d+/\d+ established \(([^)]*)\); routes learned \d+, rejected (\d+)`)

func readBGP(n *corev1.Node) (bgpView, error) {
	code, body, err := readyz(n.Name, internalIP(n))
	if err != nil || code != http.StatusOK {
		return bgpView{}, fmt.Errorf("%s: /readyz %d %q %v", n.Name, code, body, err)
	}
	m := bgpLine.FindStringSubmatch(body)
	if m == nil {
		return bgpView{}, fmt.Errorf("%s: no bgp line in /readyz %q", n.Name, body)
	}
	v := bgpView{mode: m[1], sessions: map[string]string{}}
	v.rejected, _ = strconv.Atoi(m[3])
	for _, s := range strings.Split(m[2], ", ") {
		if f := strings.Fields(s); len(f) == 3 {
			v.sessions[f[0]] = f[2]
		}
	}
	return v, nil
}

// clusterSessions checks that n's sessions with cluster nodes are exactly
// with want, all established, and that its session with the router is.
func (tp *topo) clusterSessions(n *corev1.Node, want []*corev1.Node) error {
	v, err := readBGP(n)
	if err != nil {
		return err
	}
	if v.mode != "CrossSubnet" {
		return fmt.Errorf("%s: ipipMode %s", n.Name, v.mode)
	}
	var got, exp []string
	for _, p := range tp.nodes {
		if st, ok := v.sessions[internalIP(p)]; ok {
			got = append(got, p.Name+"="+st)
		}
	}
	for _, p := range want {
		exp = append(exp, p.Name+"=established")
	}
	slices.Sort(exp)
	if !slices.Equal(got, exp) {
		return fmt.Errorf("%s: cluster sessions %v, want %v", n.Name, got, exp)
	}
	if v.sessions[torIP(n)] != "established" {
		return fmt.Errorf("%s: session with the router %s: %q", n.Name, torIP(n), v.sessions[torIP(n)])
	}
	return nil
}

// waitSessions waits until every node has exactly the cluster sessions
// peersOf names (all established), its router session, and every other
// node's pod CIDR routed as CrossSubnet wants.
func (tp *topo) waitSessions(t *testing.T, ctx context.Context, peersOf func(*corev1.Node) []*corev1.Node, within time.Duration) {
	t.Helper()
	if err := waitFor(ctx, within, func() (bool, error) {
		for _, n := range tp.nodes {
			if err := tp.clusterSessions(n, peersOf(n)); err != nil {
				return false, err
			}
			if err := tp.podRoutes(t, n); err != nil {
				return false, err
			}
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// wantRoute is how n reaches p's pods in CrossSubnet: plainly via p's
// address on the same subnet, else into the IP-in-IP device.
func wantRoute(n, p *corev1.Node) string {
	if sameSubnet(n, p) {
		return "via " + internalIP(p)
	}
	return "dev " + ipipDev
}

func (tp *topo) podRoutes(t *testing.T, n *corev1.Node) error {
	got, err := nodeRoutes(n.Name, true)
	if err != nil {
		return err
	}
	for _, p := range others(tp.nodes, n.Name) {
		if cidr := p.Annotations[annoPodCIDR]; got[cidr] != wantRoute(n, p) {
			return fmt.Errorf("%s: want %s %s, proto-%d routes %v", n.Name, cidr, wantRoute(n, p), weftRtProto, got)
		}
	}
	return nil
}

// checkCrossSubnet probes every pair over TCP and UDP while capturing on
// both underlay bridges: IP protocol 4 between nodes of different
// subnets (decoded as valid outer and inner IPv4), never between nodes of
// one subnet, whose pods' packets cross the link plainly.
func (tp *topo) checkCrossSubnet(t *testing.T, ctx context.Context) {
	capture := captureIPIP(t, tp.nodes, "wl-br0", "wl-br1")
	probeAll(t, ctx, tp.remote)
	capture.expectEncap(t, tp.nodes, func(a, b *corev1.Node) bool { return !sameSubnet(a, b) })
}

// probeAddr returns the line the server at addr answered with.
func probeAddr(ctx context.Context, from corev1.Pod, addr, proto string) (string, error) {
	out, errOut, err := cli(ctx, "probe", "--from", from.Namespace+"/"+from.Name, "--addr", addr, "--proto", proto, "--timeout", "2s", "-v")
	if err != nil {
		return "", fmt.Errorf("probe: %v: %s", err, errOut)
	}
	if strings.TrimSpace(out) != "allowed" {
		return "", fmt.Errorf("%s %s: %s", proto, addr, strings.TrimSpace(errOut))
	}
	_, answer, _ := strings.Cut(errOut, " answered by ")
	return strings.TrimSpace(answer), nil
}

// hasRoute returns n's route to dst in any protocol ("" when there is none).
func hasRoute(t *testing.T, n *corev1.Node, dst string) string {
	got, err := nodeRoutes(n.Name, false)
	if err != nil {
		t.Error(err)
	}
	return got[dst]
}
