package vxlan_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/fabric"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/vxlan"
)

// node is one emulated node: a netns on the underlay bridge, a weft0
// bridge with one pod netns behind it, and the VXLAN backend.
type node struct {
	name    string
	ns, pod ns.NetNS
	h       *netlink.Handle
	local   fabric.LocalNode
	podIP   netip.Addr
	k       *vxlan.Netlink
	b       *vxlan.Backend
	pub     fabric.Published
}

func handleIn(t *testing.T, n ns.NetNS) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	err := n.Do(func(ns.NetNS) error {
		var err error
		h, err = netlink.NewHandle()
		return err
	})
	if err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func addr(h *netlink.Handle, l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	return h.AddrAdd(l, a)
}

func sysctl(n ns.NetNS, path, val string) error {
	return n.Do(func(ns.NetNS) error { return os.WriteFile(path, []byte(val), 0o644) })
}

// newNode builds node i (1-based) attached to the bridge "ul" in brNS.
func newNode(t *testing.T, brNS ns.NetNS, brH *netlink.Handle, i int) *node {
	t.Helper()
	n := &node{name: fmt.Sprintf("node%d", i), ns: testutil.NewNS(t), pod: testutil.NewNS(t)}
	n.h = handleIn(t, n.ns)
	podH := handleIn(t, n.pod)
	br, err := brH.LinkByName("ul")
	must(t, err, "bridge")
	// Underlay: veth from the bridge namespace into the node as eth0.
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("u%d", i), MasterIndex: br.Attrs().Index},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(n.ns.Fd()))}
	must(t, brH.LinkAdd(v), "underlay veth")
	ul, _ := brH.LinkByName(v.Name)
	must(t, brH.LinkSetUp(ul), "underlay up")
	eth0, err := n.h.LinkByName("eth0")
	must(t, err, "eth0")
	must(t, addr(n.h, eth0, fmt.Sprintf("192.168.77.%d/24", 10+i)), "eth0 addr")
	must(t, n.h.LinkSetUp(eth0), "eth0 up")
	lo, _ := n.h.LinkByName("lo")
	must(t, n.h.LinkSetUp(lo), "lo up")
	must(t, sysctl(n.ns, "/proc/sys/net/ipv4/ip_forward", "1"), "ip_forward")
	// weft0 and one pod.
	wb := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "weft0"}}
	must(t, n.h.LinkAdd(wb), "weft0")
	wl, _ := n.h.LinkByName("weft0")
	must(t, addr(n.h, wl, fmt.Sprintf("10.244.%d.1/24", i)), "weft0 addr")
	must(t, n.h.LinkSetUp(wl), "weft0 up")
	pv := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "vpod", MasterIndex: wl.Attrs().Index, MTU: 1450},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(n.pod.Fd()))}
	must(t, n.h.LinkAdd(pv), "pod veth")
	pl, _ := n.h.LinkByName("vpod")
	must(t, n.h.LinkSetUp(pl), "pod veth up")
	pe, err := podH.LinkByName("eth0")
	must(t, err, "pod eth0")
	must(t, podH.LinkSetMTU(pe, 1450), "pod mtu")
	must(t, addr(podH, pe, fmt.Sprintf("10.244.%d.2/24", i)), "pod addr")
	must(t, podH.LinkSetUp(pe), "pod eth0 up")
	plo, _ := podH.LinkByName("lo")
	must(t, podH.LinkSetUp(plo), "pod lo up")
	must(t, podH.RouteAdd(&netlink.Route{LinkIndex: pe.Attrs().Index, Gw: net.ParseIP(fmt.Sprintf("10.244.%d.1", i))}), "pod default route")
	n.podIP = netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", i))
	n.local = fabric.LocalNode{Name: n.name, UnderlayIP: netip.MustParseAddr(fmt.Sprintf("192.168.77.%d", 10+i)),
		UnderlayLink: "eth0", PodCIDR: netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i)), Network: netip.MustParsePrefix("10.244.0.0/16")}
	n.start(t)
	return n
}

func (n *node) start(t *testing.T) {
	t.Helper()
	k, err := vxlan.NewNetlinkAt(n.ns.Path())
	must(t, err, "kernel")
	t.Cleanup(k.Close)
	n.k = k
	n.b = vxlan.New(vxlan.Config{VNI: 1, Port: 8472}, k, slog.Default().With("node", n.name))
	n.pub, err = n.b.Start(context.Background(), n.local)
	must(t, err, "start backend")
}

func (n *node) asPeer() fabric.Peer {
	return fabric.Peer{Name: n.name, UnderlayIP: n.local.UnderlayIP, PodCIDRs: []netip.Prefix{n.local.PodCIDR},
		Backends: []string{vxlan.Type}, Attrs: n.pub.Attrs}
}

func (n *node) apply(t *testing.T, peers ...*node) fabric.ApplyResult {
	t.Helper()
	var ps []fabric.Peer
	for _, p := range peers {
		ps = append(ps, p.asPeer())
	}
	res, err := n.b.Apply(context.Background(), ps)
	must(t, err, "apply")
	if len(res.Problems) != 0 {
		t.Fatalf("problems: %v", res.Problems)
	}
	return res
}

func (n *node) vxlanLink(t *testing.T) netlink.Link {
	t.Helper()
	l, err := n.h.LinkByName(vxlan.DefaultDevice)
	must(t, err, "weft.vxlan")
	return l
}

// serve runs a line echo server in the pod that prefixes its node name.
func (n *node) serve(t *testing.T, port int) {
	t.Helper()
	var ln net.Listener
	must(t, n.pod.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(n.podIP, uint16(port)).String())
		return err
	}), "listen")
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := io.WriteString(c, n.name+":"+line); err != nil {
						return
					}
				}
			}()
		}
	}()
}

func (n *node) dial(t *testing.T, to *node, port int) (net.Conn, error) {
	t.Helper()
	var c net.Conn
	err := n.pod.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.Dial("tcp", netip.AddrPortFrom(to.podIP, uint16(port)).String())
		return err
	})
	if c != nil {
		t.Cleanup(func() { c.Close() })
	}
	return c, err
}

func roundTrip(c net.Conn, msg string) (string, error) {
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	return line, err
}

func expectEcho(t *testing.T, c net.Conn, from string) {
	t.Helper()
	msg := fmt.Sprintf("hello-%d", rand.Int())
	got, err := roundTrip(c, msg)
	if err != nil || got != from+":"+msg+"\n" {
		t.Fatalf("echo: got %q, %v; want answer from %s", got, err, from)
	}
}

func txPackets(t *testing.T, n *node) uint64 {
	t.Helper()
	return n.vxlanLink(t).Attrs().Statistics.TxPackets
}

func TestTwoNodesOverVXLAN(t *testing.T) {
	testutil.RequireRoot(t)
	brNS := testutil.NewNS(t)
	brH := handleIn(t, brNS)
	must(t, brH.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ul"}}), "underlay bridge")
	ul, _ := brH.LinkByName("ul")
	must(t, brH.LinkSetUp(ul), "bridge up")
	a, b := newNode(t, brNS, brH, 1), newNode(t, brNS, brH, 2)
	top := t

	if mtu := a.vxlanLink(t).Attrs().MTU; mtu != 1450 {
		t.Fatalf("weft.vxlan mtu %d, want 1450", mtu)
	}
	if vx := a.vxlanLink(t).(*netlink.Vxlan); vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning {
		t.Fatalf("device %+v", vx)
	}
	a.apply(t, a, b) // the own node in the list is ignored
	b.apply(t, a)
	b.serve(t, 7000)
	a.serve(t, 7000)

	txA := txPackets(t, a)
	c, err := a.dial(t, b, 7000)
	must(t, err, "dial across nodes")
	expectEcho(t, c, "node2")
	if d := txPackets(t, a) - txA; d == 0 {
		t.Fatal("no packets left node1 through weft.vxlan")
	}
	back, err := b.dial(t, a, 7000)
	must(t, err, "dial back")
	expectEcho(t, back, "node1")

	t.Run("resync repairs hand-made deletions", func(t *testing.T) {
		dev := a.vxlanLink(t)
		idx := dev.Attrs().Index
		hw, _ := net.ParseMAC(b.pub.Attrs[vxlan.AnnoVTEPMAC])
		must(t, a.h.RouteDel(&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: net.IPv4(10, 244, 2, 0), Mask: net.CIDRMask(24, 32)}}), "delete route")
		must(t, a.h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, IP: net.IPv4(10, 244, 2, 0), HardwareAddr: hw}), "delete neigh")
		must(t, a.h.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: net.IPv4(192, 168, 77, 12), HardwareAddr: hw}), "delete fdb")
		if _, err := roundTrip(c, "broken"); err == nil {
			t.Fatal("traffic still flows with route, neighbour and FDB deleted: the test deleted nothing")
		}
		res := a.apply(t, b)
		if res.Changes != 3 {
			t.Fatalf("repair made %d changes, want 3", res.Changes)
		}
		c2, err := a.dial(t, b, 7000)
		must(t, err, "dial after repair")
		expectEcho(t, c2, "node2")
	})

	t.Run("restart adopts without flushing", func(t *testing.T) {
		conn, err := a.dial(t, b, 7000)
		must(t, err, "dial")
		expectEcho(t, conn, "node2")
		before := a.vxlanLink(t).Attrs()
		oldMAC := a.pub.Attrs[vxlan.AnnoVTEPMAC]
		must(t, a.b.Stop(context.Background(), false), "stop")
		a.start(top) // a new backend instance, as after a weftd restart (handle lives as long as the test)
		if a.pub.Attrs[vxlan.AnnoVTEPMAC] != oldMAC {
			t.Fatalf("VTEP MAC changed across restart: %s -> %s", oldMAC, a.pub.Attrs[vxlan.AnnoVTEPMAC])
		}
		// Before the first Apply the entries are still there: traffic flows.
		expectEcho(t, conn, "node2")
		if res := a.apply(t, b); res.Changes != 0 {
			t.Fatalf("apply after adoption changed %d entries", res.Changes)
		}
		after := a.vxlanLink(t).Attrs()
		if after.Index != before.Index {
			t.Fatal("device was recreated")
		}
		expectEcho(t, conn, "node2")
	})

	t.Run("removing a peer removes its entries", func(t *testing.T) {
		a.apply(t)
		dev := a.vxlanLink(t)
		fdb, _ := a.h.NeighList(dev.Attrs().Index, unix.AF_BRIDGE)
		neigh, _ := a.h.NeighList(dev.Attrs().Index, unix.AF_INET)
		routes, _ := a.h.RouteList(dev, unix.AF_INET)
		for _, e := range fdb {
			if e.IP != nil {
				t.Errorf("fdb entry left: %v", e)
			}
		}
		for _, e := range neigh {
			if e.State&netlink.NUD_PERMANENT != 0 {
				t.Errorf("neighbour left: %v", e)
			}
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP.To4()[1] == 244 {
				t.Errorf("route left: %v", r)
			}
		}
		if _, err := a.dial(t, b, 7000); err == nil {
			t.Fatal("pod on node2 still reachable after its peer was removed")
		}
		a.apply(t, b)
		c3, err := a.dial(t, b, 7000)
		must(t, err, "dial after re-adding the peer")
		expectEcho(t, c3, "node2")
	})
}
