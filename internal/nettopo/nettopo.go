// Package nettopo builds throwaway multi-node topologies for privileged
// tests and benchmarks: an underlay bridge in a namespace of its own, node
// namespaces attached to it (eth0, 192.168.77.10+i/24), and in each node a
// weft0 bridge (10.244.i.1/24) with pod namespaces behind veths. Everything
// lives in namespaces created here and is removed by the test's cleanup.
package nettopo

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/testutil"
)

// PodNetwork returns the cluster pod network used by the topology.
func PodNetwork() netip.Prefix { return netip.MustParsePrefix("10.244.0.0/16") }

// Underlay is the shared L2 segment.
type Underlay struct {
	NS ns.NetNS
	H  *netlink.Handle
	br netlink.Link
}

// Node is one emulated node.
type Node struct {
	Index      int
	Name       string
	NS         ns.NetNS
	H          *netlink.Handle
	UnderlayIP netip.Addr
	PodCIDR    netip.Prefix
	pods       int
}

// Pod is one pod namespace behind weft0.
type Pod struct {
	NS ns.NetNS
	H  *netlink.Handle
	IP netip.Addr
}

// Handle returns a netlink handle bound to n, closed at test end.
func Handle(t testing.TB, n ns.NetNS) *netlink.Handle {
	t.Helper()
	var h *netlink.Handle
	if err := n.Do(func(ns.NetNS) error {
		var err error
		h, err = netlink.NewHandle()
		return err
	}); err != nil {
		t.Fatalf("netlink handle: %v", err)
	}
	t.Cleanup(h.Close)
	return h
}

func must(t testing.TB, err error, what string) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

func addAddr(h *netlink.Handle, l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	return h.AddrAdd(l, a)
}

// Sysctl writes a sysctl inside n.
func Sysctl(n ns.NetNS, path, val string) error {
	return n.Do(func(ns.NetNS) error { return os.WriteFile(path, []byte(val), 0o644) })
}

// NewUnderlay creates the underlay bridge "ul" in a namespace of its own.
func NewUnderlay(t testing.TB) *Underlay {
	t.Helper()
	u := &Underlay{NS: testutil.NewNS(t)}
	u.H = Handle(t, u.NS)
	must(t, u.H.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "ul"}}), "underlay bridge")
	br, err := u.H.LinkByName("ul")
	must(t, err, "bridge")
	must(t, u.H.LinkSetUp(br), "bridge up")
	u.br = br
	return u
}

// AddNode attaches node i (1-based) to the underlay and gives it a weft0
// bridge holding the gateway of 10.244.i.0/24, with IP forwarding on.
func (u *Underlay) AddNode(t testing.TB, i int) *Node {
	t.Helper()
	n := &Node{Index: i, Name: fmt.Sprintf("node%d", i), NS: testutil.NewNS(t)}
	n.H = Handle(t, n.NS)
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("u%d", i), MasterIndex: u.br.Attrs().Index},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(n.NS.Fd()))}
	must(t, u.H.LinkAdd(v), "underlay veth")
	ul, err := u.H.LinkByName(v.Name)
	must(t, err, "underlay veth")
	must(t, u.H.LinkSetUp(ul), "underlay veth up")
	eth0, err := n.H.LinkByName("eth0")
	must(t, err, "eth0")
	n.UnderlayIP = netip.MustParseAddr(fmt.Sprintf("192.168.77.%d", 10+i))
	must(t, addAddr(n.H, eth0, n.UnderlayIP.String()+"/24"), "eth0 addr")
	must(t, n.H.LinkSetUp(eth0), "eth0 up")
	lo, _ := n.H.LinkByName("lo")
	must(t, n.H.LinkSetUp(lo), "lo up")
	must(t, Sysctl(n.NS, "/proc/sys/net/ipv4/ip_forward", "1"), "ip_forward")
	n.PodCIDR = netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))
	must(t, n.H.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "weft0"}}), "weft0")
	wl, _ := n.H.LinkByName("weft0")
	must(t, addAddr(n.H, wl, fmt.Sprintf("10.244.%d.1/24", i)), "weft0 addr")
	must(t, n.H.LinkSetUp(wl), "weft0 up")
	return n
}

// Local describes the node to a backend.
func (n *Node) Local() backend.LocalNode {
	return backend.LocalNode{Name: n.Name, UnderlayIP: n.UnderlayIP, UnderlayLink: "eth0", PodCIDR: n.PodCIDR, Network: PodNetwork()}
}

// AddPod creates a pod namespace behind weft0 with the next address of the
// node's subnet (10.244.i.2, .3, ...), the given MTU and a default route
// via the gateway.
func (n *Node) AddPod(t testing.TB, mtu int) *Pod {
	t.Helper()
	n.pods++
	p := &Pod{NS: testutil.NewNS(t), IP: netip.MustParseAddr(fmt.Sprintf("10.244.%d.%d", n.Index, 1+n.pods))}
	p.H = Handle(t, p.NS)
	wl, err := n.H.LinkByName("weft0")
	must(t, err, "weft0")
	host := fmt.Sprintf("vpod%d", n.pods)
	must(t, n.H.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host, MasterIndex: wl.Attrs().Index, MTU: mtu},
		PeerName: "eth0", PeerNamespace: netlink.NsFd(int(p.NS.Fd()))}), "pod veth")
	hl, _ := n.H.LinkByName(host)
	must(t, n.H.LinkSetUp(hl), "pod veth up")
	pe, err := p.H.LinkByName("eth0")
	must(t, err, "pod eth0")
	must(t, p.H.LinkSetMTU(pe, mtu), "pod mtu")
	must(t, addAddr(p.H, pe, p.IP.String()+"/24"), "pod addr")
	must(t, p.H.LinkSetUp(pe), "pod eth0 up")
	lo, _ := p.H.LinkByName("lo")
	must(t, p.H.LinkSetUp(lo), "pod lo up")
	gw := net.ParseIP(fmt.Sprintf("10.244.%d.1", n.Index))
	must(t, p.H.RouteAdd(&netlink.Route{LinkIndex: pe.Attrs().Index, Gw: gw}), "pod default route")
	return p
}
