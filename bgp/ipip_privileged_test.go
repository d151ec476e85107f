package bgp

import (
	"context"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/testutil"
)

// Two namespaces joined by a veth pair run UserspaceIPIP as the backend
// starts it; a ping between their weft.ipip addresses crosses the
// underlay as IP-in-IP and comes back.
func TestUserspaceIPIPPing(t *testing.T) {
	testutil.RequireRoot(t)
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
			tun, err := UserspaceIPIP{}.Start(ctx, l, 1480)
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
			return netlink.RouteAdd(&netlink.Route{Dst: dst, LinkIndex: dev.Attrs().Index})
		})
		if err != nil {
			t.Fatalf("node %s: %v", l.Name, err)
		}
	}
	if tuns[0].Impl() != "userspace" || tuns[0].UnderlaySubnet() != netip.MustParsePrefix("192.168.77.0/24") {
		t.Fatalf("impl %q subnet %v", tuns[0].Impl(), tuns[0].UnderlaySubnet())
	}
	out, err := exec.Command("ip", "netns", "exec", filepath.Base(nsA.Path()), "ping", "-c", "2", "-W", "2",
		"-I", "10.244.1.0", "10.244.2.0").CombinedOutput()
	if err != nil {
		t.Fatalf("ping across userspace IP-in-IP: %v\n%s", err, out)
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
