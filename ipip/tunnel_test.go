package ipip

import (
	"bytes"
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/tun"
)

var (
	nodeA, nodeB = netip.MustParseAddr("192.168.77.11"), netip.MustParseAddr("192.168.77.12")
	cidrA, cidrB = netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.2.0/24")
	podA, podB   = netip.MustParseAddr("10.244.1.7"), netip.MustParseAddr("10.244.2.5")
)

func udp4(src, dst netip.Addr, payload string) []byte {
	return testutil.UDPPacket(src, dst, 4000, 9000, []byte(payload))
}

type fakeNode struct {
	dev *tun.Fake
	t   *Tunnel
}

// startFake runs a tunnel for a node at addr on the fake underlay.
func startFake(t *testing.T, n *FakeNet, addr netip.Addr, local netip.Prefix, peers ...Peer) fakeNode {
	t.Helper()
	dev := tun.NewFake(DefaultDevice, 1480, 16)
	tn, err := NewTunnel(Options{Device: dev, LocalIP: addr, Conn: n.Conn(addr)})
	if err != nil {
		t.Fatal(err)
	}
	if p := tn.SetPeers([]netip.Prefix{local}, peers); len(p) != 0 {
		t.Fatal(p)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tn.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not return after cancel")
		}
	})
	return fakeNode{dev, tn}
}

func written(d *tun.Fake, want int) [][]byte {
	for range 200 {
		if w := d.Written(); len(w) >= want {
			return w
		}
		time.Sleep(5 * time.Millisecond)
	}
	return d.Written()
}

// TestTunnelFake: a packet routed into A's TUN comes out of B's, through
// an outer header with protocol 4; forged and spoofed packets and packets
// for another node's pods are dropped and counted by reason.
func TestTunnelFake(t *testing.T) {
	n := NewFakeNet()
	a := startFake(t, n, nodeA, cidrA, Peer{Name: "b", UnderlayIP: nodeB, PodCIDRs: []netip.Prefix{cidrB}})
	b := startFake(t, n, nodeB, cidrB, Peer{Name: "a", UnderlayIP: nodeA, PodCIDRs: []netip.Prefix{cidrA}})
	if a.t.Mode() != Userspace {
		t.Fatalf("mode %q", a.t.Mode())
	}
	pkt := udp4(podA, podB, "hello")
	a.dev.Inject(pkt)
	a.dev.Inject(udp4(podA, netip.MustParseAddr("10.244.9.1"), "nowhere"))
	if w := written(b.dev, 1); len(w) != 1 || !bytes.Equal(w[0], pkt) {
		t.Fatalf("B's TUN got %x, want %x", w, pkt)
	}
	outsider := netip.MustParseAddr("192.168.77.99")
	n.Deliver(Outer(outsider, nodeB, udp4(podA, podB, "forged")))
	n.Deliver(Outer(nodeA, nodeB, udp4(netip.MustParseAddr("10.244.3.2"), podB, "spoofed")))
	n.Deliver(Outer(nodeA, nodeB, udp4(podA, netip.MustParseAddr("10.244.3.3"), "foreign")))
	bad := udp4(podA, podB, "badsum")
	bad[10] ^= 0xff
	n.Deliver(Outer(nodeA, nodeB, bad))
	n.Deliver(Outer(nodeA, nodeB, udp4(podA, podB, "second")))
	w := written(b.dev, 2)
	if len(w) != 2 || !bytes.Contains(w[1], []byte("second")) {
		t.Fatalf("B's TUN got %d packets", len(w))
	}
	testutil.Eventually(t, "drops", func() bool {
		d := b.t.Stats().Drops
		return d["unknown-sender"] == 1 && d["spoofed-source"] == 1 && d["foreign-destination"] == 1 && d["not-ipv4"] == 1
	})
	testutil.Eventually(t, "no-route", func() bool { return a.t.Stats().Drops["no-route"] == 1 })
	s := a.t.Stats()
	if s.Tx.Packets != 1 || s.Mode != Userspace || s.Peers != 1 {
		t.Fatalf("A stats %+v", s)
	}
	if rx := b.t.Stats().Rx; rx.Packets != 2 || rx.Bytes != uint64(len(pkt)+len(w[1])) {
		t.Fatalf("B rx %+v", rx)
	}
}

// TestTunnelStopsOnDeviceLoss: a device that goes away ends Run with an
// error instead of spinning.
func TestTunnelStopsOnDeviceLoss(t *testing.T) {
	dev := tun.NewFake(DefaultDevice, 1480, 4)
	tn, err := NewTunnel(Options{Device: dev, Conn: NewFakeNet().Conn(nodeA)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- tn.Run(context.Background()) }()
	_ = dev.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "tun to ipip") {
			t.Fatalf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run kept going without its device")
	}
}

func TestTableProblems(t *testing.T) {
	tab, problems := NewTable([]netip.Prefix{cidrA, netip.MustParsePrefix("fd00::/64")}, []Peer{
		{Name: "b", UnderlayIP: nodeB, PodCIDRs: []netip.Prefix{cidrB, netip.MustParsePrefix("10.244.1.128/25")}},
		{Name: "c", UnderlayIP: nodeB, PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}},
		{Name: "d", PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.4.0/24")}},
		{Name: "e", UnderlayIP: netip.MustParseAddr("192.168.77.15"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/23"), netip.MustParsePrefix("10.244.5.0/24")}},
	})
	want := []string{"fd00::/64: not IPv4", "b: pod CIDR 10.244.1.128/25 overlaps this node's",
		"c: underlay address 192.168.77.12 already belongs to b", "d: underlay address invalid IP is no IPv4",
		"e: pod CIDR 10.244.2.0/23 overlaps 10.244.2.0/24 of b"}
	if len(problems) != len(want) {
		t.Fatalf("problems %q", problems)
	}
	for _, w := range want {
		if !slices.ContainsFunc(problems, func(p string) bool { return strings.Contains(p, w) }) {
			t.Errorf("no problem %q in %q", w, problems)
		}
	}
	if tab.Peers() != 2 {
		t.Fatalf("%d peers", tab.Peers())
	}
	for dst, via := range map[string]string{"10.244.2.9": "192.168.77.12", "10.244.5.1": "192.168.77.15", "10.244.3.1": ""} {
		got, ok := tab.Next(udp4(podA, netip.MustParseAddr(dst), "x"))
		if (via == "") == ok || (ok && got.String() != via) {
			t.Errorf("Next(%s) = %v %v, want %q", dst, got, ok, via)
		}
	}
}

func TestDetect(t *testing.T) {
	dir := t.TempDir()
	r := Roots{Sys: filepath.Join(dir, "sys"), Modules: filepath.Join(dir, "mod")}
	if d := Detect(r); d.Mode != Userspace || !strings.Contains(d.Reason, "unreadable") {
		t.Errorf("empty roots: %+v", d)
	}
	write := func(p, s string) {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(r.Modules, "modules.dep"), "kernel/net/ipv4/ip_gre.ko.xz: kernel/net/ipv4/ip_tunnel.ko.xz\n")
	if d := Detect(r); d.Mode != Userspace {
		t.Errorf("no ipip.ko: %+v", d)
	}
	write(filepath.Join(r.Modules, "modules.dep"), "kernel/net/ipv4/ipip.ko.xz: kernel/net/ipv4/tunnel4.ko.xz\n")
	if d := Detect(r); d.Mode != Kernel || !strings.Contains(d.Reason, "loadable") {
		t.Errorf("ipip.ko listed: %+v", d)
	}
	write(filepath.Join(r.Sys, "module", "ipip", "refcnt"), "0\n")
	if d := Detect(r); d.Mode != Kernel || !strings.Contains(d.Reason, "loaded") {
		t.Errorf("ipip loaded: %+v", d)
	}
}
