package ipip

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
)

// groOn makes the node's underlay link behave as a NIC with GRO does: the
// kernel's IP-in-IP GRO (built in, with or without the ipip module)
// merges a flow's packets before they reach the raw socket, and a flush
// timeout keeps them merging across the veth's one-packet polls.
func groOn(t *testing.T, u *nettopo.Underlay, n *nettopo.Node) {
	t.Helper()
	for _, c := range [][]string{
		// veth merges only what comes from a peer without TSO
		{"nsenter", "--net=" + u.NS.Path(), "ethtool", "-K", fmt.Sprintf("u%d", n.Index), "tso", "off"},
		{"nsenter", "--net=" + n.NS.Path(), "ethtool", "-K", "eth0", "gro", "on"},
		{"nsenter", "--net=" + n.NS.Path(), "unshare", "--mount", "--propagation", "private", "sh", "-c",
			"mount -t sysfs sysfs /sys && echo 200000 > /sys/class/net/eth0/gro_flush_timeout"},
	} {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", c, err, out)
		}
	}
}

// TestMergedSegmentsFromGRO: with GRO on node 2's underlay link (as on a
// real NIC) the raw socket receives IP-in-IP packets whose inner TCP
// segment is larger than the MTU, its checksum left for whoever cuts it.
// The tunnel hands them to the TUN as GSO writes: a TCP stream across
// keeps its rate, nothing is dropped as oversize, and Merged counts them.
// (The cutting path, for a TUN without virtio-net headers, is
// TestCutMerged's.)
func TestMergedSegmentsFromGRO(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"iperf3", "ethtool", "unshare"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing (make deps): %v", tool, err)
		}
	}
	u := nettopo.NewUnderlay(t)
	n1, n2 := u.AddNode(t, 1), u.AddNode(t, 2)
	p1, p2 := n1.AddPod(t, testMTU), n2.AddPod(t, testMTU)
	t1, _ := startNode(t, n1, n2.PodCIDR)
	t2, _ := startNode(t, n2, n1.PodCIDR)
	t1.SetPeers([]netip.Prefix{n1.PodCIDR}, []Peer{peerOf(n2)})
	t2.SetPeers([]netip.Prefix{n2.PodCIDR}, []Peer{peerOf(n1)})
	groOn(t, u, n2)

	g := nettopo.IPerf3(t, p1.NS, p2.NS, p2.IP, 1, 2)
	s := t2.Stats()
	t.Logf("iperf3 pod1 -> pod2, GRO on node 2's underlay: %.2f Gbit/s; node 2 rx %+v merged %d drops %v tun %s",
		g, s.Rx, s.Merged, s.Drops, s.TUNMode)
	out, err := exec.Command("nsenter", "--net="+p2.NS.Path(), "nstat", "-az", "TcpInCsumErrors").CombinedOutput()
	if err != nil {
		t.Fatalf("nstat: %v: %s", err, out)
	}
	if f := strings.Fields(string(out)); len(f) < 2 || f[len(f)-3] != "TcpInCsumErrors" || f[len(f)-2] != "0" {
		t.Fatalf("pod 2 saw TCP checksum errors:\n%s", out)
	}
	if s.Merged == 0 {
		t.Fatalf("no merged segment reached the tunnel (GRO did not merge): %+v", s)
	}
	if s.Drops["oversize"] != 0 || s.Drops["tun-write"] != 0 {
		t.Fatalf("merged segments dropped: %v", s.Drops)
	}
	if g < 0.05 { // the emulated NIC's flush timeout slows it: correctness, not speed, is checked here

		t.Fatalf("TCP across merged segments at %.2f Gbit/s", g)
	}
}
