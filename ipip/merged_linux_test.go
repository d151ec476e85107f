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
// Pods have the pod MTU (underlay - 50, below the tunnel's). The tunnel
// hands merged segments to the TUN as GSO writes of the pods' segment
// size: a bulk stream goes across, nothing is dropped as oversize, no
// checksum error reaches the pod, Merged counts them; and a stream of
// 1420-byte writes without Nagle, whose two segments (1398 + 22 bytes)
// merge to more than the pods' MTU but less than the tunnel's, keeps its
// 5 Mbit/s (written whole, such a merge would be too big for the pod
// bridge and the flow would stall). (The cutting path, for a TUN without
// virtio-net headers, is TestCutMerged's.)
func TestMergedSegmentsFromGRO(t *testing.T) {
	testutil.RequireRoot(t)
	for _, tool := range []string{"iperf3", "ethtool", "unshare", "nstat"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s missing (make deps): %v", tool, err)
		}
	}
	const podMTU = 1500 - 50
	u := nettopo.NewUnderlay(t)
	n1, n2 := u.AddNode(t, 1), u.AddNode(t, 2)
	p1, p2 := n1.AddPod(t, podMTU), n2.AddPod(t, podMTU)
	t1, _ := startNodeSeg(t, n1, n2.PodCIDR, podMTU)
	t2, _ := startNodeSeg(t, n2, n1.PodCIDR, podMTU)
	t1.SetPeers([]netip.Prefix{n1.PodCIDR}, []Peer{peerOf(n2)})
	t2.SetPeers([]netip.Prefix{n2.PodCIDR}, []Peer{peerOf(n1)})
	groOn(t, u, n2)

	g := nettopo.IPerf3(t, p1.NS, p2.NS, p2.IP, 1, 2)
	s := t2.Stats()
	t.Logf("iperf3 pod1 -> pod2, GRO on node 2's underlay: %.2f Gbit/s; node 2 rx %+v merged %d drops %v tun %s",
		g, s.Rx, s.Merged, s.Drops, s.TUNMode)
	if s.Merged == 0 {
		t.Fatalf("no merged segment reached the tunnel (GRO did not merge): %+v", s)
	}
	if s.Drops["oversize"] != 0 || s.Drops["tun-write"] != 0 {
		t.Fatalf("merged segments dropped: %v", s.Drops)
	}
	if g < 0.05 { // the emulated NIC's flush timeout slows it: correctness, not speed, is checked here
		t.Fatalf("TCP across merged segments at %.2f Gbit/s", g)
	}
	if n := nstat(t, p2.NS.Path(), "TcpInCsumErrors"); n != "0" {
		t.Fatalf("pod 2 saw %s TCP checksum errors", n)
	}

	before := t2.Stats().Merged
	small := nettopo.IPerf3Via(t, p1.NS, p2.NS, p2.IP, netip.AddrPortFrom(p2.IP, 5201), 1, 3, "-l", "1420", "-N", "-b", "5M")
	after := t2.Stats()
	t.Logf("1420-byte writes, no Nagle, 5 Mbit/s: %.2f Mbit/s; merged %d; node 2 IpFragFails %s", small*1000,
		after.Merged-before, nstat(t, n2.NS.Path(), "IpFragFails"))
	if small*1000 < 4 {
		t.Fatalf("stream of 1420-byte writes at %.2f Mbit/s (want 5): merges above the pod MTU were not cut to it", small*1000)
	}
}

// nstat returns the absolute value of one counter in the namespace at path.
func nstat(t *testing.T, path, counter string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+path, "nstat", "-az", counter).CombinedOutput()
	if err != nil {
		t.Fatalf("nstat: %v: %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == counter {
			return f[1]
		}
	}
	t.Fatalf("nstat: no %s in\n%s", counter, out)
	return ""
}
