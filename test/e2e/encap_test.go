package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

const (
	vxlanPort   = 8472
	guardPort   = 9999             // a UDP port of the test's own in pod b
	strangerIP  = "172.18.255.250" // in the underlay, used by no node
	strangerDev = "wl-stranger"
)

// guardPod is one of the three pods of the guard check, with what the
// test needs to reach into it.
type guardPod struct {
	pod   corev1.Pod
	ip    netip.Addr
	netns string
}

// testForgedVXLANDropped (issue 8, item 2): with a policy that lets only
// pod a (node 1) reach pod b (node 2), a hand-built VXLAN frame carrying
// an inner packet a -> b reaches b when node 1 sends it (control), and
// does not when a pod on node 3 or a host on the underlay that is no node
// sends it; node 1 cannot have node 2 relay a's packet to a host on the
// underlay; the guard's drop counters show where each was dropped.
func testForgedVXLANDropped(t *testing.T, ctx context.Context, c kubernetes.Interface, nsName string, nodes []*corev1.Node) {
	a := startGuardPod(t, ctx, c, nsName, "guard-a", nodes[0].Name)
	b := startGuardPod(t, ctx, c, nsName, "guard-b", nodes[1].Name)
	x := startGuardPod(t, ctx, c, nsName, "guard-x", nodes[2].Name)
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: nsName, Name: "guard-only-a"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"guard": "guard-b"}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{
				{PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"guard": "guard-a"}}}}}}}}
	if _, err := c.NetworkingV1().NetworkPolicies(nsName).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.NetworkingV1().NetworkPolicies(nsName).Delete(context.Background(), pol.Name, metav1.DeleteOptions{})
	})
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		fromX, err1 := probe(ctx, x.pod, b.pod, udpPort, "udp")
		fromA, err2 := probe(ctx, a.pod, b.pod, udpPort, "udp")
		return err1 == nil && err2 == nil && fromX == "" && fromA == b.pod.Name, fmt.Errorf("x->b %q %v, a->b %q %v", fromX, err1, fromA, err2)
	}); err != nil {
		t.Fatalf("policy a-only -> b not in force: %v", err)
	}

	bNS, err := ns.GetNS(b.netns)
	if err != nil {
		t.Fatal(err)
	}
	defer bNS.Close()
	in := testutil.ListenUDP(t, bNS, guardPort)
	// Inner MACs as node 1's VTEP would write them (the device drops a
	// frame carrying its own MAC as source).
	mac, err := net.ParseMAC(nodes[1].Annotations[annoVTEPMAC])
	if err != nil {
		t.Fatalf("node %s VTEP MAC: %v", nodes[1].Name, err)
	}
	srcMAC, err := net.ParseMAC(nodes[0].Annotations[annoVTEPMAC])
	if err != nil {
		t.Fatalf("node %s VTEP MAC: %v", nodes[0].Name, err)
	}
	vtep := netip.AddrPortFrom(nodeIP(t, nodes[1]), vxlanPort)
	sendTo := func(from string, dst netip.Addr, at *testutil.UDPLog) bool {
		token := fmt.Sprintf("forged-%d", rand.Int())
		f := testutil.VXLANFrame{VNI: 1, DstMAC: mac, SrcMAC: srcMAC, Src: a.ip, Dst: dst, SrcPort: 40000, DstPort: guardPort, Payload: []byte(token)}
		n, err := ns.GetNS(from)
		if err != nil {
			t.Fatal(err)
		}
		defer n.Close()
		testutil.SendUDP(t, n, vtep, f.Bytes())
		return at.Await(token+" from ", 2*time.Second)
	}
	send := func(from string) bool { return sendTo(from, b.ip, in) }
	str := strangerNS(t)
	if !send(filepath.Join("/run/netns", nodes[0].Name)) {
		t.Fatal("control: the frame sent by node 1 itself (a's node) did not reach b: the forged frames below prove nothing")
	}
	if send(x.netns) {
		t.Errorf("a frame (inner %s -> %s) from pod %s on %s reached b", a.ip, b.ip, x.pod.Name, nodes[2].Name)
	}
	if send(str) {
		t.Errorf("a frame (inner %s -> %s) from %s on the underlay, no node, reached b", a.ip, b.ip, strangerIP)
	}
	// Node 1 itself, with a's source, may not use node 2 as a relay: a
	// frame for a host on the underlay (which node 2 would forward it to)
	// is dropped before decapsulation.
	strNS, err := ns.GetNS(str)
	if err != nil {
		t.Fatal(err)
	}
	defer strNS.Close()
	atStranger := testutil.ListenUDP(t, strNS, guardPort)
	if sendTo(filepath.Join("/run/netns", nodes[0].Name), netip.MustParseAddr(strangerIP), atStranger) {
		t.Errorf("node 1 relayed a frame (inner %s -> %s) through %s to a host on the underlay", a.ip, strangerIP, nodes[1].Name)
	}
	d2 := guardDrops(t, ctx, nodes[1].Name, "vxlan")
	d3 := guardDrops(t, ctx, nodes[2].Name, "vxlan")
	t.Logf("drops: %s %v, %s %v", nodes[1].Name, d2, nodes[2].Name, d3)
	if d2[encapguard.ReasonUnknownSender] < 3 || d2[encapguard.ReasonForeignDst] < 3 || d3[encapguard.ReasonFromPod] < 3 {
		t.Errorf("drop counters did not move: %s %v, %s %v", nodes[1].Name, d2, nodes[2].Name, d3)
	}
}

func startGuardPod(t *testing.T, ctx context.Context, c kubernetes.Interface, nsName, name, node string) guardPod {
	t.Helper()
	p := echoPod(name, node)
	p.Labels = map[string]string{"guard": name}
	if _, err := c.CoreV1().Pods(nsName).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.CoreV1().Pods(nsName).Delete(context.Background(), name, metav1.DeleteOptions{}) })
	var got *corev1.Pod
	if err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		var err error
		got, err = c.CoreV1().Pods(nsName).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.Phase == corev1.PodRunning && got.Status.PodIP != "", fmt.Errorf("%s %s", got.Status.Phase, got.Status.PodIP)
	}); err != nil {
		t.Fatalf("pod %s: %v", name, err)
	}
	// Pod namespaces live in their node's mount namespace, the node
	// emulator's (weftd's root is the image's when it runs from one).
	pid, err := procIn(node, "nodeemu")
	if err != nil {
		t.Fatal(err)
	}
	uid := strings.ReplaceAll(string(got.UID), "-", "")
	return guardPod{pod: *got, ip: netip.MustParseAddr(got.Status.PodIP), netns: fmt.Sprintf("/proc/%d/root/run/netns/wlp-%s", pid, uid[:12])}
}

func nodeIP(t *testing.T, n *corev1.Node) netip.Addr {
	t.Helper()
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			return netip.MustParseAddr(a.Address)
		}
	}
	t.Fatalf("node %s has no InternalIP", n.Name)
	return netip.Addr{}
}

// strangerNS attaches a throwaway namespace to the cluster's underlay
// bridge with an address no node uses, and returns its path. Namespace and
// link go when the test ends.
func strangerNS(t *testing.T) string {
	t.Helper()
	s := testutil.NewNS(t)
	ul := nodeHandle(t, "wl-underlay")
	defer ul.Close()
	br, err := ul.LinkByName("wl-br0")
	if err != nil {
		t.Fatalf("underlay bridge: %v", err)
	}
	if err := ul.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: strangerDev, MasterIndex: br.Attrs().Index},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(s.Fd()))}); err != nil {
		t.Fatalf("stranger veth: %v", err)
	}
	t.Cleanup(func() {
		h := nodeHandle(t, "wl-underlay")
		defer h.Close()
		if l, err := h.LinkByName(strangerDev); err == nil {
			_ = h.LinkDel(l)
		}
	})
	l, _ := ul.LinkByName(strangerDev)
	if err := ul.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if err := s.Do(func(ns.NetNS) error {
		eth0, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addr, _ := netlink.ParseAddr(strangerIP + "/16")
		if err := netlink.AddrAdd(eth0, addr); err != nil {
			return err
		}
		return netlink.LinkSetUp(eth0)
	}); err != nil {
		t.Fatalf("stranger address: %v", err)
	}
	return s.Path()
}

// guardDrops reads the drop counters of one encapsulation's guard (kind
// "vxlan", "udp") in node's namespace.
func guardDrops(t *testing.T, ctx context.Context, node, kind string) map[string]uint64 {
	t.Helper()
	path := filepath.Join("/run/netns", node)
	mode, err := iptables.Detect(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	d, err := encapguard.NewIPTables(iptables.Runner{Mode: mode, NetNS: path}).Drops(ctx, kind)
	if err != nil {
		t.Fatalf("%s: %v", node, err)
	}
	return d
}
