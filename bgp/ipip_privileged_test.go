package bgp

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipip"
)

// Two namespaces joined by a veth pair run HostIPIP as the backend starts
// it (on this machine, without the ipip module, the userspace tunnel;
// where the kernel has ipip, its link with routes via the peer onlink); a
// ping between their weft.ipip addresses crosses the underlay as IP-in-IP
// and comes back.
func TestHostIPIPPing(t *testing.T) {
	testutil.RequireRoot(t)
	roots, err := ipip.HostRoots()
	if err != nil {
		t.Fatal(err)
	}
	det := ipip.Detect(roots)
	t.Logf("ipip on this kernel: %s (%s)", det.Mode, det.Reason)
	nsA, nsB := testutil.NewNS(t), testutil.NewNS(t)
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ulA"}, PeerName: "ulB"}
	if err := nsA.Do(func(ns.NetNS) error { return netlink.LinkAdd(veth) }); err != nil {
		t.Fatal(err)
	}
	locals := []backend.LocalNode{
		{Name: "a", UnderlayIP: netip.MustParseAddr("192.168.77.1"), UnderlayLink: "ulA", UnderlayMTU: 1500, PodCIDR: netip.MustParsePrefix("10.244.1.0/24")},
		{Name: "b", UnderlayIP: netip.MustParseAddr("192.168.77.2"), UnderlayLink: "ulB", UnderlayMTU: 1500, PodCIDR: netip.MustParsePrefix("10.244.2.0/24")},
	}
	if err := nsA.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("ulB")
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(l, int(nsB.Fd()))
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var tuns []Tunnel
	for i, n := range []ns.NetNS{nsA, nsB} {
		l, other := locals[i], locals[1-i]
		err := n.Do(func(ns.NetNS) error {
			link, err := netlink.LinkByName(l.UnderlayLink)
			if err != nil {
				return err
			}
			a, _ := netlink.ParseAddr(l.UnderlayIP.String() + "/24")
			if err := netlink.AddrAdd(link, a); err != nil {
				return err
			}
			if err := netlink.LinkSetUp(link); err != nil {
				return err
			}
			tun, err := HostIPIP{}.Start(ctx, l, 1480)
			if err != nil {
				return err
			}
			tuns = append(tuns, tun)
			if p := tun.SetPeers([]netip.Prefix{l.PodCIDR}, []backend.Peer{{Name: other.Name, UnderlayIP: other.UnderlayIP,
				PodCIDRs: []netip.Prefix{other.PodCIDR}}}); len(p) != 0 {
				t.Errorf("tunnel problems %v", p)
			}
			dev, err := netlink.LinkByName(tun.Device())
			if err != nil {
				return err
			}
			_, dst, _ := net.ParseCIDR(other.PodCIDR.String())
			r := &netlink.Route{Dst: dst, LinkIndex: dev.Attrs().Index}
			if tun.ViaPeer() { // as routeVia writes it
				r.Gw, r.Flags = other.UnderlayIP.AsSlice(), int(netlink.FLAG_ONLINK)
			}
			return netlink.RouteAdd(r)
		})
		if err != nil {
			t.Fatalf("node %s: %v", l.Name, err)
		}
	}
	if tuns[0].Impl() != string(det.Mode) || tuns[0].UnderlaySubnet() != netip.MustParsePrefix("192.168.77.0/24") {
		t.Fatalf("impl %q subnet %v", tuns[0].Impl(), tuns[0].UnderlaySubnet())
	}
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(nsA.Path()), "ping", "-c", "2", "-W", "2",
		"-I", "10.244.1.0", "10.244.2.0").CombinedOutput()
	if err != nil {
		t.Fatalf("ping across %s IP-in-IP: %v\n%s", det.Mode, err, out)
	}
	for i, tun := range tuns {
		// Stop removes the device in the caller's namespace, as weftd
		// runs in its node's.
		err := []ns.NetNS{nsA, nsB}[i].Do(func(ns.NetNS) error {
			if err := tun.Stop(true); err != nil {
				t.Error(err)
			}
			_, err := netlink.LinkByName("weft.ipip")
			return err
		})
		if err == nil {
			t.Fatalf("weft.ipip still there after Stop(remove)")
		}
	}
}

// HostIPIP follows detection: with the ipip module there (roots faked) it
// makes the kernel link (netlink faked: this machine has no module) and
// its routes go via the peer onlink; without, it runs the userspace TUN.
func TestHostIPIPPicksKernelLink(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNS(t)
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "sys", "module", "ipip"), 0o755); err != nil {
		t.Fatal(err)
	}
	withModule := ipip.Roots{Sys: filepath.Join(dir, "sys"), Modules: filepath.Join(dir, "modules")}
	without := ipip.Roots{Sys: filepath.Join(dir, "nosys"), Modules: filepath.Join(dir, "modules")}
	l := backend.LocalNode{Name: "a", UnderlayIP: netip.MustParseAddr("192.168.77.1"), UnderlayLink: "ulA", UnderlayMTU: 1500,
		PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}
	ctx := context.Background()
	err := n.Do(func(ns.NetNS) error {
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "ulA"}, PeerName: "ulB"}); err != nil {
			return err
		}
		link, err := netlink.LinkByName("ulA")
		if err != nil {
			return err
		}
		a, _ := netlink.ParseAddr("192.168.77.1/24")
		if err := netlink.AddrAdd(link, a); err != nil {
			return err
		}
		links := ipip.NewFakeLinks()
		tun, err := HostIPIP{Roots: withModule, Links: links}.Start(ctx, l, 1480)
		if err != nil {
			return err
		}
		if tun.Impl() != "kernel" || !tun.ViaPeer() || tun.Device() != "weft.ipip" || tun.UnderlaySubnet() != netip.MustParsePrefix("192.168.77.0/24") {
			defer tun.Stop(true)
			return fmt.Errorf("kernel tunnel: impl %q via peer %v device %q subnet %v", tun.Impl(), tun.ViaPeer(), tun.Device(), tun.UnderlaySubnet())
		}
		if got, want := links.Describe("weft.ipip"), "ipip local 192.168.77.1 remote <nil> mtu 1480 pmtudisc 10.244.1.0/32"; got != want {
			t.Errorf("kernel link %q, want %q (down until the guard is in place)", got, want)
		}
		if probs := tun.SetPeers(nil, nil); len(probs) != 0 {
			t.Errorf("SetPeers: %v", probs)
		}
		if got, want := links.Describe("weft.ipip"), "ipip local 192.168.77.1 remote <nil> mtu 1480 pmtudisc up 10.244.1.0/32"; got != want {
			t.Errorf("after SetPeers: kernel link %q, want %q", got, want)
		}
		if _, err := netlink.LinkByName("weft.ipip"); err == nil {
			t.Errorf("a real weft.ipip appeared beside the kernel link")
		}
		if err := tun.Stop(false); err != nil || links.Describe("weft.ipip") == "" {
			t.Errorf("stop without remove: %v; link %q must stay (forwarding goes on while weftd restarts)", err, links.Describe("weft.ipip"))
		}
		if err := tun.Stop(true); err != nil || links.Describe("weft.ipip") != "" {
			t.Errorf("stop with remove: %v; link %q", err, links.Describe("weft.ipip"))
		}
		host, err := ipip.HostRoots()
		if err != nil {
			return err
		}
		links.Calls() // forget the kernel link's
		tun, err = HostIPIP{Roots: without, Links: links}.Start(ctx, l, 1480)
		if ipip.Detect(host).Mode == ipip.Kernel {
			// The real kernel has ipip: the userspace tunnel is refused.
			if err == nil {
				_ = tun.Stop(true)
				t.Errorf("userspace tunnel started on a kernel with ipip")
			}
			return nil
		}
		if err != nil {
			return err
		}
		defer tun.Stop(true)
		if tun.Impl() != "userspace" || tun.ViaPeer() || len(links.Calls()) != 0 {
			t.Errorf("userspace tunnel: impl %q via peer %v; kernel link calls %v", tun.Impl(), tun.ViaPeer(), links.Calls())
		}
		if _, err := netlink.LinkByName("weft.ipip"); err != nil {
			t.Errorf("userspace TUN: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
