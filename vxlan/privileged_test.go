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
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/vxlan"
)

// node is one emulated node (internal/nettopo) with one pod and the VXLAN
// backend.
type node struct {
	*nettopo.Node
	pod *nettopo.Pod
	k   *vxlan.Netlink
	b   *vxlan.Backend
	g   *encapguard.IPTables
	pub backend.Published
}

func must(t *testing.T, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func newNode(t *testing.T, u *nettopo.Underlay, i int) *node {
	t.Helper()
	n := &node{Node: u.AddNode(t, i)}
	n.pod = n.AddPod(t, 1450)
	n.start(t)
	return n
}

func (n *node) start(t *testing.T) {
	t.Helper()
	k, err := vxlan.NewNetlinkAt(n.NS.Path())
	must(t, err, "kernel")
	t.Cleanup(k.Close)
	n.k = k
	n.g = newGuard(t, n.NS.Path())
	routes := route.New(route.NewNetlink(k.Handle()), slog.Default())
	n.b = vxlan.New(vxlan.Config{VNI: 1, Port: 8472}, k, routes, n.g, slog.Default().With("node", n.Name))
	n.pub, err = n.b.Start(context.Background(), n.Local())
	must(t, err, "start backend")
}

func (n *node) asPeer() backend.Peer {
	return backend.Peer{Name: n.Name, UnderlayIP: n.UnderlayIP, PodCIDRs: []netip.Prefix{n.PodCIDR},
		Backends: []string{vxlan.Type}, Attrs: n.pub.Attrs}
}

func (n *node) apply(t *testing.T, peers ...*node) backend.ApplyResult {
	t.Helper()
	var ps []backend.Peer
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
	l, err := n.H.LinkByName(vxlan.DefaultDevice)
	must(t, err, "weft.vxlan")
	return l
}

// serve runs a line echo server in the pod that prefixes its node name.
func (n *node) serve(t *testing.T, port int) {
	t.Helper()
	var ln net.Listener
	must(t, n.pod.NS.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(n.pod.IP, uint16(port)).String())
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
					if _, err := io.WriteString(c, n.Name+":"+line); err != nil {
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
	err := n.pod.NS.Do(func(ns.NetNS) error {
		var err error
		d := net.Dialer{Timeout: 3 * time.Second}
		c, err = d.Dial("tcp", netip.AddrPortFrom(to.pod.IP, uint16(port)).String())
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
	u := nettopo.NewUnderlay(t)
	a, b := newNode(t, u, 1), newNode(t, u, 2)
	top := t

	if mtu := a.vxlanLink(t).Attrs().MTU; mtu != 1450 {
		t.Fatalf("weft.vxlan mtu %d, want 1450", mtu)
	}
	if vx := a.vxlanLink(t).(*netlink.Vxlan); vx.VxlanId != 1 || vx.Port != 8472 || vx.Learning {
		t.Fatalf("device %+v", vx)
	}
	// Down until Apply has put the guard in place: an up VXLAN device
	// decapsulates from anyone.
	if a.vxlanLink(t).Attrs().Flags&net.FlagUp != 0 {
		t.Fatal("weft.vxlan up after Start, before Apply")
	}
	a.apply(t, a, b) // the own node in the list is ignored
	b.apply(t, a)
	if a.vxlanLink(t).Attrs().Flags&net.FlagUp == 0 {
		t.Fatal("weft.vxlan still down after Apply")
	}
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
		must(t, a.H.RouteDel(&netlink.Route{LinkIndex: idx, Dst: &net.IPNet{IP: net.IPv4(10, 244, 2, 0), Mask: net.CIDRMask(24, 32)}}), "delete route")
		must(t, a.H.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_INET, IP: net.IPv4(10, 244, 2, 0), HardwareAddr: hw}), "delete neigh")
		must(t, a.H.NeighDel(&netlink.Neigh{LinkIndex: idx, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF, IP: net.IPv4(192, 168, 77, 12), HardwareAddr: hw}), "delete fdb")
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

	t.Run("upgrade adopts the routes of a weftd before the route protocol", func(t *testing.T) {
		conn, err := a.dial(t, b, 7000)
		must(t, err, "dial")
		expectEcho(t, conn, "node2")
		// What an older weftd left: its routes with RTPROT_STATIC, one of
		// them to a peer that has gone since.
		idx := a.vxlanLink(t).Attrs().Index
		for _, dst := range []string{"10.244.2.0/24", "10.244.9.0/24"} {
			_, ipn, _ := net.ParseCIDR(dst)
			must(t, a.H.RouteReplace(&netlink.Route{LinkIndex: idx, Dst: ipn, Gw: ipn.IP, Flags: int(netlink.FLAG_ONLINK),
				Protocol: unix.RTPROT_STATIC}), "old weftd's route "+dst)
		}
		must(t, a.b.Stop(context.Background(), false), "stop")
		a.start(top)
		if res := a.apply(t, b); res.Changes != 2 { // 10.244.2.0/24 replaced in place, 10.244.9.0/24 deleted
			t.Fatalf("upgrade apply changed %d routes, want 2", res.Changes)
		}
		routes, err := a.H.RouteList(a.vxlanLink(t), unix.AF_INET)
		must(t, err, "routes")
		var got []string
		for _, r := range routes {
			if r.Dst != nil {
				got = append(got, fmt.Sprintf("%s via %s proto %d", r.Dst, r.Gw, r.Protocol))
			}
		}
		if want := fmt.Sprintf("10.244.2.0/24 via 10.244.2.0 proto %d", route.Protocol); len(got) != 1 || got[0] != want {
			t.Fatalf("routes on weft.vxlan after upgrade %v, want [%s]", got, want)
		}
		expectEcho(t, conn, "node2")
	})

	t.Run("removing a peer removes its entries", func(t *testing.T) {
		a.apply(t)
		dev := a.vxlanLink(t)
		fdb, _ := a.H.NeighList(dev.Attrs().Index, unix.AF_BRIDGE)
		neigh, _ := a.H.NeighList(dev.Attrs().Index, unix.AF_INET)
		routes, _ := a.H.RouteList(dev, unix.AF_INET)
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

	t.Run("a hand-deleted device is recreated and republished", func(t *testing.T) {
		old := a.pub.Attrs[vxlan.AnnoVTEPMAC]
		must(t, a.H.LinkDel(a.vxlanLink(t)), "delete weft.vxlan")
		res := a.apply(t, b)
		a.pub = res.Published
		if res.Published.Attrs[vxlan.AnnoVTEPMAC] == "" || res.Published.Attrs[vxlan.AnnoVTEPMAC] == old {
			t.Fatalf("recreated device publishes %v (old MAC %s)", res.Published.Attrs, old)
		}
		b.apply(t, a) // the peer learns the new VTEP MAC, as through the Node annotation
		c4, err := a.dial(t, b, 7000)
		must(t, err, "dial after recreation")
		expectEcho(t, c4, "node2")
	})
}
