package bgp

import (
	"context"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/netlinkx"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/testutil"
)

// The bgp backend in ipipMode Always on a node (userspace IP-in-IP, the
// real iptables guard in the node's namespace, a fake speaker): the raw
// table guards protocol 4 with the bgp peer admitted, IP-in-IP from a
// host that is no node is dropped there and counted, and the guard goes
// with the backend.
func TestBackendIPIPGuardInKernel(t *testing.T) {
	testutil.RequireRoot(t)
	u := nettopo.NewUnderlay(t)
	n1, n2, outsider := u.AddNode(t, 1), u.AddNode(t, 2), u.AddNode(t, 3)
	ctx := context.Background()
	mode, err := iptables.Detect(ctx, n1.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	ipt := iptables.Runner{Mode: mode, NetNS: n1.NS.Path()}
	h, err := netlinkx.NewHandleAt(n1.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	g := encapguard.NewIPTables(ipt)
	f := &Factory{Speaker: NewFake(), Routes: route.New(route.NewNetlink(h), testLogger()), IPIP: UserspaceIPIP{Log: testLogger()},
		Guard: g, Log: testLogger()}
	b, err := f.New(json.RawMessage(`{"type":"bgp","ipipMode":"Always"}`))
	if err != nil {
		t.Fatal(err)
	}
	local := n1.Local()
	local.UnderlayMTU = 1500
	inNode := func(fn func() error) {
		t.Helper()
		if err := n1.NS.Do(func(ns.NetNS) error { return fn() }); err != nil {
			t.Fatal(err)
		}
	}
	inNode(func() error { _, err := b.Start(ctx, local); return err })
	defer inNode(func() error { return b.Stop(ctx, true) })
	p2 := backend.Peer{Name: n2.Name, UnderlayIP: n2.UnderlayIP, PodCIDRs: []netip.Prefix{n2.PodCIDR}, Backends: []string{Type}}
	if _, err := b.Apply(ctx, []backend.Peer{p2}); err != nil {
		t.Fatal(err)
	}
	save, err := ipt.Save(ctx, "raw")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "-A PREROUTING -p ipencap") || !strings.Contains(save, encapguard.Chain("ipip")) {
		t.Fatalf("no IP-in-IP guard in the raw table:\n%s", save)
	}
	if set := inNS(t, n1, "ipset", "list", encapguard.Set("ipip")); !strings.Contains(set, n2.UnderlayIP.String()) {
		t.Fatalf("bgp peer %s not in the guard's set:\n%s", n2.UnderlayIP, set)
	}
	for range 3 {
		sendIPIPFrom(t, outsider.NS, n1.UnderlayIP, testutil.UDPPacket(netip.MustParseAddr("10.244.2.2"),
			netip.MustParseAddr("10.244.1.2"), 4000, 9000, []byte("forged")))
	}
	testutil.Eventually(t, "guard counts the stranger's IP-in-IP", func() bool {
		d, err := g.Drops(ctx, "ipip")
		return err == nil && d[encapguard.ReasonUnknownSender] == 3
	})
	inNode(func() error { return b.Stop(ctx, true) })
	if save, _ := ipt.Save(ctx, "raw"); strings.Contains(save, encapguard.Chain("ipip")) {
		t.Fatalf("guard left after Stop with cleanup:\n%s", save)
	}
}

// sendIPIPFrom sends inner (a whole IPv4 packet) as IP-in-IP from n to dst.
func sendIPIPFrom(t *testing.T, n ns.NetNS, dst netip.Addr, inner []byte) {
	t.Helper()
	if err := n.Do(func(ns.NetNS) error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_IPIP)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Sendto(fd, inner, 0, &unix.SockaddrInet4{Addr: dst.As4()})
	}); err != nil {
		t.Fatal(err)
	}
}
