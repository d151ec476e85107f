package vxlan_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/vxlan"
)

// newGuard returns the real encapsulation guard for the namespace at path,
// in the iptables mode detected there.
func newGuard(t *testing.T, path string) *encapguard.IPTables {
	t.Helper()
	mode, err := iptables.Detect(context.Background(), path)
	must(t, err, "detect iptables mode")
	return encapguard.NewIPTables(iptables.Runner{Mode: mode, NetNS: path})
}

// nsIPTables runs iptables (detected mode) inside n.
func nsIPTables(t *testing.T, n ns.NetNS, args ...string) {
	t.Helper()
	mode, err := iptables.Detect(context.Background(), n.Path())
	must(t, err, "detect")
	cmd := exec.Command("nsenter", append([]string{"--net=" + n.Path(), "--", "iptables-" + string(mode)}, args...)...)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("iptables %v: %v: %s", args, err, out)
	}
}

// stranger attaches a namespace to the underlay bridge with ip/24: a host
// on the underlay that is no node.
func stranger(t *testing.T, u *nettopo.Underlay, ip string) ns.NetNS {
	t.Helper()
	s := testutil.NewNS(t)
	h := nettopo.Handle(t, s)
	br, err := u.H.LinkByName("ul")
	must(t, err, "underlay bridge")
	must(t, u.H.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ustr", MasterIndex: br.Attrs().Index},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(s.Fd()))}), "stranger veth")
	ul, _ := u.H.LinkByName("ustr")
	must(t, u.H.LinkSetUp(ul), "stranger veth up")
	eth0, err := h.LinkByName("eth0")
	must(t, err, "eth0")
	a, _ := netlink.ParseAddr(ip + "/24")
	must(t, h.AddrAdd(eth0, a), "stranger addr")
	must(t, h.LinkSetUp(eth0), "stranger eth0 up")
	return s
}

// TestGuardDropsForgedFrames: hand-built VXLAN frames carrying an inner
// packet to the pod on node2 reach it only from a real peer whose pod CIDR
// holds the inner source; a host on the underlay that is no node, a peer
// forging another node's pod address, a pod (masqueraded by its node)
// emitting VXLAN, and a peer using node2 as a relay (inner destination
// outside node2's pod CIDR) are all dropped and counted; real traffic
// still flows.
func TestGuardDropsForgedFrames(t *testing.T) {
	testutil.RequireRoot(t)
	u := nettopo.NewUnderlay(t)
	n1, n2, n3 := newNode(t, u, 1), newNode(t, u, 2), newNode(t, u, 3)
	n1.apply(t, n2, n3)
	n2.apply(t, n1, n3)
	n3.apply(t, n1, n2)
	// node3 masquerades pod traffic leaving the pod network, as weftd does.
	nsIPTables(t, n3.NS, "-t", "nat", "-A", "POSTROUTING", "-s", "10.244.0.0/16", "!", "-d", "10.244.0.0/16", "-j", "MASQUERADE")
	in := testutil.ListenUDP(t, n2.pod.NS, 9999)
	mac2, _ := net.ParseMAC(n2.pub.Attrs[vxlan.AnnoVTEPMAC])
	mac1, _ := net.ParseMAC(n1.pub.Attrs[vxlan.AnnoVTEPMAC])
	vtep2 := netip.AddrPortFrom(n2.UnderlayIP, vxlan.DefaultPort)
	forgeTo := func(innerSrc string, dst netip.Addr) (string, []byte) {
		token := fmt.Sprintf("forged-%d", rand.Int())
		f := testutil.VXLANFrame{VNI: 1, DstMAC: mac2, SrcMAC: mac1, Src: netip.MustParseAddr(innerSrc), Dst: dst,
			SrcPort: 40000, DstPort: 9999, Payload: []byte(token)}
		return token, f.Bytes()
	}
	forge := func(innerSrc string) (string, []byte) { return forgeTo(innerSrc, n2.pod.IP) }

	// Control: the frame as a real peer would send it arrives, so the
	// frames below are well formed and only the sender makes them fail.
	token, frame := forge(n1.pod.IP.String())
	testutil.SendUDP(t, n1.NS, vtep2, frame)
	if !in.Await(token+" from ", 2*time.Second) {
		t.Fatal("control: a well-formed frame from node1 with its own pod's source did not arrive")
	}
	str := stranger(t, u, "192.168.77.99")
	cases := []struct {
		name string
		from ns.NetNS
		src  string
	}{
		{"host on the underlay that is no node", str, n1.pod.IP.String()},
		{"real peer, inner source outside its pod CIDR", n1.NS, "10.244.3.7"},
		{"pod on node3, masqueraded, inner source in node3's CIDR", n3.pod.NS, "10.244.3.7"},
	}
	for _, c := range cases {
		token, frame := forge(c.src)
		testutil.SendUDP(t, c.from, vtep2, frame)
		if in.Await(token+" from ", time.Second) {
			t.Errorf("%s: forged frame (inner %s -> %s) reached the pod on node2", c.name, c.src, n2.pod.IP)
		}
	}
	// A real peer with its own pod's source may still not use node2 as a
	// relay: an inner packet for anything but node2's pods (a host on the
	// underlay, which node2 would forward it to; another node's pod) is
	// dropped before decapsulation.
	atStranger := testutil.ListenUDP(t, str, 9999)
	atN3 := testutil.ListenUDP(t, n3.pod.NS, 9999)
	for _, c := range []struct {
		name string
		dst  netip.Addr
		in   *testutil.UDPLog
	}{{"a host on the underlay", netip.MustParseAddr("192.168.77.99"), atStranger}, {"node3's pod", n3.pod.IP, atN3}} {
		token, frame := forgeTo(n1.pod.IP.String(), c.dst)
		testutil.SendUDP(t, n1.NS, vtep2, frame)
		if c.in.Await(token+" from ", time.Second) {
			t.Errorf("node1 relayed a packet through node2 to %s (%s)", c.name, c.dst)
		}
	}
	ctx := context.Background()
	d2, err := n2.g.Drops(ctx, vxlan.Type)
	must(t, err, "node2 counters")
	d3, err := n3.g.Drops(ctx, vxlan.Type)
	must(t, err, "node3 counters")
	if d2[encapguard.ReasonUnknownSender] < 3 || d2[encapguard.ReasonForgedInner] < 3 || d2[encapguard.ReasonForeignDst] < 6 || d3[encapguard.ReasonFromPod] < 3 {
		t.Errorf("drop counters: node2 %v, node3 %v", d2, d3)
	}
	// Real pod traffic over VXLAN, both ways and from the third node.
	n2.serve(t, 7000)
	n1.serve(t, 7000)
	for _, p := range [][2]*node{{n1, n2}, {n3, n2}, {n2, n1}} {
		c, err := p[0].dial(t, p[1], 7000)
		must(t, err, "dial "+p[0].Name+" -> "+p[1].Name)
		expectEcho(t, c, p[1].Name)
	}
	save, _ := exec.Command("nsenter", "--net="+n2.NS.Path(), "--", "iptables-save", "-t", "raw").Output()
	if !strings.Contains(string(save), encapguard.Chain(vxlan.Type)) {
		t.Errorf("no guard chain in node2's raw table:\n%s", save)
	}
}
