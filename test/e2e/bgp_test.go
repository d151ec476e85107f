package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
)

const (
	labelRR     = "weft.dev/route-reflector"
	weftRtProto = 87
)

// checkBGP switches the cluster of TestVXLANMesh to the bgp backend with
// ipipMode Never, then Always, and back to vxlan (issue 10): every node gets an Established
// session with each other node and their pod CIDRs as proto-87 routes via
// their underlay addresses, every remote pair answers; labelling one node
// a route reflector re-forms the sessions without restarting weftd (the
// others peer only with it) and the pairs still answer; removing the label
// brings the mesh back; with ipipMode Always every other node's pod CIDR
// goes into weft.ipip and the pairs answer; a capture on the underlay
// shows pod-addressed packets and no IP protocol 4 in Never, and valid
// IP-in-IP (outer and inner IPv4) and no pod-addressed packet in Always;
// back on vxlan the mesh and the pairs are as before.
func checkBGP(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node, remote []pair) {
	cms := c.CoreV1().ConfigMaps("kube-system")
	orig, err := cms.Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	restore := func(ctx context.Context) error {
		cur, err := cms.Get(ctx, "weft", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Data = orig.Data
		_, err = cms.Update(ctx, cur, metav1.UpdateOptions{})
		return err
	}
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		// Leave the cluster on vxlan for the next subtests.
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		setRR(ctx, c, nodes[0].Name, false)
		if err := restore(ctx); err == nil {
			_ = waitVXLAN(t, ctx, c, nodes)
		}
	})
	pids := map[string]int{}
	for _, n := range nodes {
		if pids[n.Name], err = weftdPID(n.Name); err != nil {
			t.Fatal(err)
		}
	}
	setBackend(t, ctx, c, orig.Data["net-conf.json"], `{"type":"bgp","ipipMode":"Never"}`)
	start := time.Now()
	mesh := func(n *corev1.Node) []*corev1.Node { return others(nodes, n.Name) }
	waitBGP(t, ctx, nodes, never, mesh, 2*time.Minute)
	t.Logf("bgp full mesh established and routed after %s", time.Since(start).Round(time.Millisecond))
	t.Run("weftctl bgp", func(t *testing.T) { checkWeftctlBGP(t, ctx, nodes) })
	// ipipMode Never: pod-addressed packets on the underlay, no IP-in-IP.
	capture := captureIPIP(t, nodes, "wl-br0")
	probeAll(t, ctx, remote)
	capture.expectEncap(t, nodes, func(_, _ *corev1.Node) bool { return false })

	// One route reflector: the clients peer with it only.
	setRR(ctx, c, nodes[0].Name, true)
	start = time.Now()
	waitBGP(t, ctx, nodes, never, func(n *corev1.Node) []*corev1.Node {
		if n.Name == nodes[0].Name {
			return others(nodes, n.Name)
		}
		return nodes[:1]
	}, time.Minute)
	t.Logf("sessions re-formed around reflector %s after %s", nodes[0].Name, time.Since(start).Round(time.Millisecond))
	// GoBGP cannot change a session's reflector role in place, so the
	// sessions are rebuilt; the backend holds each peer's Node-implied
	// route meanwhile. TestBGPTopology measures the gap under continuous
	// pings (bound 1 s); here every pair must answer.
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		for _, p := range remote {
			if got, err := probe(ctx, p.from, p.to, tcpPort, "tcp"); err != nil || got != p.to.Name {
				return false, fmt.Errorf("%s -> %s: %q %v", p.from.Name, p.to.Name, got, err)
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("pairs after the reflector label: %v", err)
	}
	t.Logf("every pair answers again %s after the reflector label", time.Since(start).Round(time.Millisecond))
	probeAll(t, ctx, remote)
	setRR(ctx, c, nodes[0].Name, false)
	waitBGP(t, ctx, nodes, never, mesh, time.Minute)
	for _, n := range nodes {
		if pid, err := weftdPID(n.Name); err != nil || pid != pids[n.Name] {
			t.Errorf("%s: weftd pid %d -> %d (%v): sessions must re-form without a restart", n.Name, pids[n.Name], pid, err)
		}
	}

	// ipipMode Always: every remote pod CIDR into weft.ipip (userspace
	// IP-in-IP on this kernel, which has no ipip module).
	setBackend(t, ctx, c, orig.Data["net-conf.json"], `{"type":"bgp","ipipMode":"Always"}`)
	start = time.Now()
	waitBGP(t, ctx, nodes, always, mesh, 2*time.Minute)
	t.Logf("bgp ipipMode Always established and routed after %s", time.Since(start).Round(time.Millisecond))
	// ipipMode Always: IP protocol 4 between every pair of nodes, no
	// pod-addressed packet on the underlay.
	capture = captureIPIP(t, nodes, "wl-br0")
	probeAll(t, ctx, remote)
	capture.expectEncap(t, nodes, func(_, _ *corev1.Node) bool { return true })

	// Back to vxlan.
	if err := restore(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitVXLAN(t, ctx, c, nodes); err != nil {
		t.Fatalf("back on vxlan: %v", err)
	}
	probeAll(t, ctx, remote)
}

// waitVXLAN waits until every node is back on vxlan: ready, no bgp line
// in /readyz, weft.ipip gone, and its entries for the others as the Nodes
// now announce them (the devices were recreated: new VTEP MACs). nodes is
// then updated in place, for the caller's later checks.
func waitVXLAN(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node) error {
	return waitFor(ctx, 2*time.Minute, func() (bool, error) {
		fresh := weftNodes(t, ctx, c)
		if len(fresh) != len(nodes) {
			return false, fmt.Errorf("%d nodes", len(fresh))
		}
		for _, n := range fresh {
			h := nodeHandle(t, n.Name)
			_, errV := h.LinkByName(vxlanDev)
			_, errI := h.LinkByName("weft.ipip")
			h.Close()
			if errV != nil {
				return false, fmt.Errorf("%s: no %s yet: %v", n.Name, vxlanDev, errV)
			}
			if errI == nil {
				return false, fmt.Errorf("%s: weft.ipip still there after switching away from bgp", n.Name)
			}
			if code, body, err := readyz(n.Name, internalIP(n)); err != nil || code != http.StatusOK || strings.Contains(body, "info: bgp:") {
				return false, fmt.Errorf("%s: /readyz %d %q %v", n.Name, code, body, err)
			}
			if err := expectPeers(t, n.Name, others(fresh, n.Name)); err != nil {
				return false, err
			}
		}
		copy(nodes, fresh)
		return true, nil
	})
}

// setBackend replaces the backend section of net-conf.json.
func setBackend(t *testing.T, ctx context.Context, c kubernetes.Interface, netconf, section string) {
	t.Helper()
	var conf map[string]json.RawMessage
	if err := json.Unmarshal([]byte(netconf), &conf); err != nil {
		t.Fatalf("net-conf.json: %v", err)
	}
	conf["backend"] = json.RawMessage(section)
	data, _ := json.Marshal(conf)
	cms := c.CoreV1().ConfigMaps("kube-system")
	cur, err := cms.Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cur.Data = map[string]string{"net-conf.json": string(data)}
	if _, err := cms.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func setRR(ctx context.Context, c kubernetes.Interface, node string, on bool) {
	v := "null"
	if on {
		v = `"true"`
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, labelRR, v)
	_, _ = c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{})
}

// bgpMode is what one ipipMode shows: its /readyz line and its routes.
type bgpMode struct {
	readyz *regexp.Regexp
	// dev is the device of routes to other nodes ("" = via the owner's
	// underlay address).
	dev string
}

var (
	never  = bgpMode{readyz: regexp.MustCompile(`info: bgp: ipipMode Never; sessions (\d+)/(\d+) established \(([^)]*)\)`)}
	always = bgpMode{readyz: regexp.MustCompile(`info: bgp: ipipMode Always \(userspace ipip\); sessions (\d+)/(\d+) established \(([^)]*)\)`), dev: "weft.ipip"}
)

// waitBGP waits until every node runs bgp, has exactly one Established
// session with each node peersOf lists (per /readyz) and a proto-87 route
// to every other node's pod CIDR via that node's underlay address.
func waitBGP(t *testing.T, ctx context.Context, nodes []*corev1.Node, mode bgpMode, peersOf func(*corev1.Node) []*corev1.Node, within time.Duration) {
	t.Helper()
	if err := waitFor(ctx, within, func() (bool, error) {
		for _, n := range nodes {
			code, body, err := readyz(n.Name, internalIP(n))
			if err != nil || code != http.StatusOK {
				return false, fmt.Errorf("%s: /readyz %d %q %v", n.Name, code, body, err)
			}
			m := mode.readyz.FindStringSubmatch(body)
			want := peersOf(n)
			if m == nil || m[1] != fmt.Sprint(len(want)) || m[2] != m[1] {
				return false, fmt.Errorf("%s: want %d established sessions, /readyz %q", n.Name, len(want), body)
			}
			for _, p := range want {
				if !strings.Contains(m[3], internalIP(p)+" AS64512 established") {
					return false, fmt.Errorf("%s: no established session with %s: %q", n.Name, p.Name, m[3])
				}
			}
			if err := bgpRoutes(t, n, others(nodes, n.Name), mode.dev); err != nil {
				return false, err
			}
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
}

// bgpRoutes checks node's main table: each peer's pod CIDR with proto 87,
// via its underlay address (dev "") or out of dev, and weft.vxlan gone.
func bgpRoutes(t *testing.T, node *corev1.Node, peers []*corev1.Node, dev string) error {
	h := nodeHandle(t, node.Name)
	defer h.Close()
	if _, err := h.LinkByName(vxlanDev); err == nil {
		return fmt.Errorf("%s: %s still exists on bgp", node.Name, vxlanDev)
	}
	got, err := nodeRoutes(node.Name, true)
	if err != nil {
		return err
	}
	for _, p := range peers {
		want := "via " + internalIP(p)
		if dev != "" {
			want = "dev " + dev
		}
		if cidr := p.Annotations[annoPodCIDR]; got[cidr] != want {
			return fmt.Errorf("%s: want %s %s proto %d, have proto-%d routes %v", node.Name, cidr, want, weftRtProto, weftRtProto, got)
		}
	}
	return nil
}
