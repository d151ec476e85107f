package route_test

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/testutil"
)

// kernelNS is a throwaway netns with two up bridges standing in for a
// backend's device (weft.test) and the underlay (eth1, 192.168.9.1/24).
type kernelNS struct {
	t  *testing.T
	h  *netlinkx.Handle
	ns netns.NsHandle
}

func newKernelNS(t *testing.T) *kernelNS {
	n := testutil.NewNS(t)
	h, err := netlinkx.NewHandleAt(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	nsh, err := netns.GetFromPath(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nsh.Close() })
	k := &kernelNS{t: t, h: h, ns: nsh}
	for _, name := range []string{"weft.test", "eth1"} {
		k.must(h.Raw().LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}), "add "+name)
		l, err := h.LinkByName(name)
		k.must(err, name)
		k.must(h.Raw().LinkSetUp(l), "up "+name)
	}
	eth1, _ := h.LinkByName("eth1")
	a, _ := netlink.ParseAddr("192.168.9.1/24")
	k.must(h.Raw().AddrAdd(eth1, a), "address")
	return k
}

func (k *kernelNS) must(err error, what string) {
	k.t.Helper()
	if err != nil {
		k.t.Fatalf("%s: %v", what, err)
	}
}

// add installs a route as another program would.
func (k *kernelNS) add(dst, gw, dev string, proto int, onlink bool) {
	k.t.Helper()
	l, err := k.h.LinkByName(dev)
	k.must(err, dev)
	_, ipn, _ := net.ParseCIDR(dst)
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: ipn, Gw: net.ParseIP(gw), Protocol: netlink.RouteProtocol(proto)}
	if onlink {
		r.Flags = int(netlink.FLAG_ONLINK)
	}
	k.must(k.h.Raw().RouteAdd(r), "add route "+dst)
}

// routes lists the main table as "dst via gw dev proto N".
func (k *kernelNS) routes() []string {
	k.t.Helper()
	rs, err := route.NewNetlink(k.h).List()
	k.must(err, "list")
	var out []string
	for _, r := range rs {
		out = append(out, r.Route.String()+" proto "+strconv.Itoa(r.Protocol))
	}
	slices.Sort(out)
	return out
}

func TestTableInKernel(t *testing.T) {
	testutil.RequireRoot(t)
	ctx := context.Background()
	k := newKernelNS(t)
	// Foreign routes: another program's (proto boot, static) and one of an
	// older weftd (static on its own device) that is adopted.
	k.add("10.9.0.0/16", "192.168.9.254", "eth1", unix.RTPROT_BOOT, false)
	k.add("10.50.0.0/16", "192.168.9.253", "eth1", unix.RTPROT_STATIC, false)
	k.add("10.244.2.0/24", "10.244.2.0", "weft.test", unix.RTPROT_STATIC, true)
	k.add("10.244.3.0/24", "10.244.3.0", "weft.test", unix.RTPROT_STATIC, true)
	tab := route.New(route.NewNetlink(k.h), slog.Default())
	tab.Adopt("weft.test")
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	onlink := route.Route{Dst: pfx("10.244.2.0/24"), Gw: ip("10.244.2.0"), Dev: "weft.test", OnLink: true}
	underlay := route.Route{Dst: pfx("10.244.4.0/24"), Gw: ip("192.168.9.7"), Dev: "eth1"}
	if n, err := tab.Apply(ctx, "a", []route.Route{onlink, underlay}); err != nil || n != 3 {
		t.Fatalf("apply: %d changes, %v", n, err)
	}
	want := []string{
		"10.244.2.0/24 via 10.244.2.0 dev weft.test onlink proto 87", // adopted, not duplicated
		"10.244.4.0/24 via 192.168.9.7 dev eth1 proto 87",
		"10.50.0.0/16 via 192.168.9.253 dev eth1 proto 4",
		"10.9.0.0/16 via 192.168.9.254 dev eth1 proto 3",
		"192.168.9.0/24 dev eth1 src 192.168.9.1 proto 2",
		"fe80::/64 dev eth1 proto 2",
		"fe80::/64 dev weft.test proto 2",
	}
	if got := k.routes(); !slices.Equal(got, want) {
		t.Fatalf("routes\n%v\nwant\n%v", got, want)
	}
	if n, err := tab.Apply(ctx, "a", []route.Route{onlink, underlay}); err != nil || n != 0 {
		t.Fatalf("converged apply: %d changes, %v", n, err)
	}

	t.Run("owner switch is one replace", func(t *testing.T) {
		events := make(chan netlink.RouteUpdate, 64)
		done := make(chan struct{})
		defer close(done)
		k.must(netlink.RouteSubscribeWithOptions(events, done, netlink.RouteSubscribeOptions{Namespace: &k.ns}), "subscribe")
		viaUnderlay := route.Route{Dst: onlink.Dst, Gw: ip("192.168.9.8"), Dev: "eth1"}
		if n, err := tab.Apply(ctx, "b", []route.Route{viaUnderlay}); err != nil || n != 1 {
			t.Fatalf("switch: %d changes, %v", n, err)
		}
		if n, err := tab.Release(ctx, "a"); err != nil || n != 1 { // a's 10.244.4.0/24 goes; 10.244.2.0/24 is b's
			t.Fatalf("release a: %d changes, %v", n, err)
		}
		var seen []string
		timeout := time.After(time.Second)
	collect:
		for {
			select {
			case u := <-events:
				kind := map[uint16]string{unix.RTM_NEWROUTE: "new", unix.RTM_DELROUTE: "del"}[u.Type]
				seen = append(seen, kind+" "+u.Dst.String())
			case <-timeout:
				break collect
			}
		}
		if !slices.Equal(seen, []string{"new 10.244.2.0/24", "del 10.244.4.0/24"}) {
			t.Fatalf("netlink events %v, want one new for the handed-over destination and no delete of it", seen)
		}
		got := k.routes()
		if !slices.Contains(got, "10.244.2.0/24 via 192.168.9.8 dev eth1 proto 87") || slices.Contains(got, want[0]) || slices.Contains(got, want[1]) {
			t.Fatalf("after switch: %v", got)
		}
	})

	t.Run("drift is repaired", func(t *testing.T) {
		l, _ := k.h.LinkByName("eth1")
		_, dst, _ := net.ParseCIDR("10.244.2.0/24")
		k.must(k.h.Raw().RouteDel(&netlink.Route{LinkIndex: l.Attrs().Index, Dst: dst}), "delete by hand")
		k.add("10.244.9.0/24", "192.168.9.9", "eth1", route.Protocol, false) // a Weft route nobody wants
		if n, err := tab.Resync(ctx); err != nil || n != 2 {
			t.Fatalf("resync: %d changes, %v", n, err)
		}
		got := k.routes()
		if !slices.Contains(got, "10.244.2.0/24 via 192.168.9.8 dev eth1 proto 87") || slices.ContainsFunc(got, func(s string) bool { return s[:10] == "10.244.9.0" }) {
			t.Fatalf("after resync: %v", got)
		}
	})

	t.Run("release removes only Weft's", func(t *testing.T) {
		if _, err := tab.Release(ctx, "b"); err != nil {
			t.Fatal(err)
		}
		if got := k.routes(); !slices.Equal(got, want[2:]) {
			t.Fatalf("after release\n%v\nwant\n%v", got, want[2:])
		}
	})
}
