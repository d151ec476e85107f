package tun

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
)

func open(t *testing.T, n ns.NetNS, name string, mtu int) *Native {
	t.Helper()
	d, err := Open(Options{Name: name, MTU: mtu, NetNS: n.Path()})
	if err != nil {
		t.Fatalf("open %s: %v", name, err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func kernelAtLeast(major, minor int) bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	var a, b int
	_, _ = fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &a, &b)
	return a > major || a == major && b >= minor
}

// TestOpenCreateAdoptRemove creates weft.udp in a throwaway namespace,
// checks the kernel's view of it and the offloads, closes it (the device
// and a route through it stay), adopts it with a new MTU, refuses a second
// holder and a non-TUN link of the name, and removes it.
func TestOpenCreateAdoptRemove(t *testing.T) {
	n := testutil.NewNS(t)
	h := nettopo.Handle(t, n)
	d := open(t, n, "weft.udp", 1400)
	if d.Adopted() {
		t.Fatal("fresh device reported as adopted")
	}
	l, err := h.LinkByName("weft.udp")
	if err != nil {
		t.Fatal(err)
	}
	if tt, ok := l.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TUN {
		t.Fatalf("weft.udp is %T %s, want a TUN", l, l.Type())
	}
	if l.Attrs().MTU != 1400 || l.Attrs().Flags&unix.IFF_UP == 0 {
		t.Fatalf("mtu %d flags %v, want 1400 and up", l.Attrs().MTU, l.Attrs().Flags)
	}
	m := d.Mode()
	if !m.VnetHdr || !m.TSO || !m.GROWrite || m.Fallback != "" {
		t.Fatalf("mode %+v, want vnet header, TSO, GRO writes", m)
	}
	if kernelAtLeast(6, 2) && !m.USO {
		t.Fatalf("kernel has USO (6.2+) but mode is %s", m)
	}
	t.Logf("mode %s, batch %d", m, d.BatchSize())
	if d.BatchSize() < 2 {
		t.Fatalf("batch size %d with offloads", d.BatchSize())
	}
	if _, err := Open(Options{Name: "weft.udp", MTU: 1400, NetNS: n.Path()}); err == nil || !strings.Contains(err.Error(), "another process") {
		t.Fatalf("second holder: err %v, want EBUSY", err)
	}
	idx := l.Attrs().Index
	dst := netip.MustParsePrefix("10.77.0.0/24")
	if err := h.RouteAdd(&netlink.Route{LinkIndex: idx, Dst: prefixNet(dst)}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("weft.udp"); err != nil {
		t.Fatalf("device gone after Close (not persistent): %v", err)
	}

	d2 := open(t, n, "weft.udp", 1300)
	if !d2.Adopted() {
		t.Fatal("existing device not reported as adopted")
	}
	l2, _ := h.LinkByName("weft.udp")
	if l2.Attrs().Index != idx || l2.Attrs().MTU != 1300 {
		t.Fatalf("adopted index %d mtu %d, want %d and 1300", l2.Attrs().Index, l2.Attrs().MTU, idx)
	}
	if rs, _ := h.RouteList(l2, unix.AF_INET); !hasRoute(rs, dst) {
		t.Fatalf("route %s lost across re-attach: %v", dst, rs)
	}
	if !d2.Mode().TSO {
		t.Fatalf("adopted mode %s", d2.Mode())
	}

	if err := h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "weft.notun"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(Options{Name: "weft.notun", NetNS: n.Path()}); err == nil || !strings.Contains(err.Error(), "not a TUN") {
		t.Fatalf("open over a bridge: err %v", err)
	}

	_ = d2.Close()
	if err := Remove("weft.udp", n.Path()); err != nil {
		t.Fatal(err)
	}
	if _, err := h.LinkByName("weft.udp"); err == nil {
		t.Fatal("device still there after Remove")
	}
	if err := Remove("weft.udp", n.Path()); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

func hasRoute(rs []netlink.Route, p netip.Prefix) bool {
	for _, r := range rs {
		if r.Dst != nil && r.Dst.String() == p.String() {
			return true
		}
	}
	return false
}

// tunNet gives the device 10.99.0.1/24 in n and returns a UDP listener on
// 10.99.0.1:port.
func tunNet(t *testing.T, n ns.NetNS, h *netlink.Handle, port int) *testutil.UDPLog {
	t.Helper()
	l, err := h.LinkByName("weft.udp")
	if err != nil {
		t.Fatal(err)
	}
	a, _ := netlink.ParseAddr("10.99.0.1/24")
	if err := h.AddrAdd(l, a); err != nil {
		t.Fatal(err)
	}
	return testutil.ListenUDP(t, n, port)
}

func packetBufs(pkts ...[]byte) [][]byte {
	var bufs [][]byte
	for _, p := range pkts {
		b := make([]byte, BufSize)
		copy(b[Offset:], p)
		bufs = append(bufs, b[:Offset+len(p)])
	}
	return bufs
}

// TestPacketsThrough reads a datagram the namespace routed into the device
// and writes one the namespace's socket receives.
func TestPacketsThrough(t *testing.T) {
	n := testutil.NewNS(t)
	h := nettopo.Handle(t, n)
	d := open(t, n, "weft.udp", 1400)
	log := tunNet(t, n, h, 7000)

	testutil.SendUDP(t, n, netip.MustParseAddrPort("10.99.0.2:7001"), []byte("out-through-tun"))
	if !readUntil(t, d, "out-through-tun") {
		t.Fatal("datagram routed into the device never came out of Read")
	}

	pkt := testutil.UDPPacket(netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.1"), 7001, 7000, []byte("in-through-tun"))
	if _, err := d.Write(packetBufs(pkt)); err != nil {
		t.Fatal(err)
	}
	if !log.Await("in-through-tun", 3*time.Second) {
		t.Fatal("packet written into the device never reached the socket")
	}
}

// readUntil reads the device until a packet carries payload (other packets,
// e.g. IPv6 router solicitations, are skipped) or 3 s pass.
func readUntil(t *testing.T, d *Native, payload string) bool {
	t.Helper()
	got := make(chan bool, 1)
	go func() {
		bufs := make([][]byte, d.BatchSize())
		for i := range bufs {
			bufs[i] = make([]byte, BufSize)
		}
		sizes := make([]int, len(bufs))
		for {
			k, err := d.Read(bufs, sizes)
			if err != nil {
				got <- false
				return
			}
			for i := range k {
				if strings.Contains(string(bufs[i][Offset:Offset+sizes[i]]), payload) {
					got <- true
					return
				}
			}
		}
	}()
	select {
	case ok := <-got:
		return ok
	case <-time.After(3 * time.Second):
		return false
	}
}

// einvalWrites is a wireguard device whose coalescing writes fail as on the
// kernels of tailscale#13041.
type einvalWrites struct{ wgtun.Device }

func (einvalWrites) Write([][]byte, int) (int, error) {
	return 0, &os.PathError{Op: "write", Path: "/dev/net/tun", Err: unix.EINVAL}
}

// einvalDevice opens weft.udp in a new namespace, listening on 7000 behind
// it, with coalescing writes failing (einvalWrites); src and dst are the
// addresses of packets that reach the listener.
func einvalDevice(t *testing.T) (d *Native, log *testutil.UDPLog, src, dst netip.Addr) {
	n := testutil.NewNS(t)
	h := nettopo.Handle(t, n)
	d = open(t, n, "weft.udp", 1400)
	log = tunNet(t, n, h, 7000)
	d.wg = einvalWrites{d.wg}
	return d, log, netip.MustParseAddr("10.99.0.2"), netip.MustParseAddr("10.99.0.1")
}

// TestGROWriteFallback: a coalesced write rejected with EINVAL turns GRO
// writes off, Mode says so, and the next packets still reach the
// namespace, written one by one behind a plain virtio-net header.
func TestGROWriteFallback(t *testing.T) {
	d, log, src, dst := einvalDevice(t)
	// Two packets: a batch of one is written plainly, never coalesced.
	lost := testutil.UDPPacket(src, dst, 7001, 7000, []byte("lost"))
	if _, err := d.Write(packetBufs(lost, lost)); err == nil {
		t.Fatal("rejected GRO write returned no error")
	}
	m := d.Mode()
	if m.GROWrite || !m.TSO || !strings.Contains(m.Fallback, "GRO write failed") || !strings.Contains(m.String(), "fallback") {
		t.Fatalf("mode after EINVAL: %+v (%s)", m, m)
	}
	bufs := packetBufs(testutil.UDPPacket(src, dst, 7001, 7000, []byte("plain-1")),
		testutil.UDPPacket(src, dst, 7001, 7000, []byte("plain-2")))
	if k, err := d.Write(bufs); err != nil || k != 2 {
		t.Fatalf("plain write: %d, %v", k, err)
	}
	for _, p := range []string{"plain-1", "plain-2"} {
		if !log.Await(p, 3*time.Second) {
			t.Fatalf("%s written after the fallback never arrived", p)
		}
	}
}

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// TestSinglePacketWriteIsPlain: a batch of one packet is written without
// the coalescing path (which has nothing to merge and costs a 1-byte
// request/response more than the write): with coalescing writes failing
// it still arrives, and GRO writes stay on for larger batches.
func TestSinglePacketWriteIsPlain(t *testing.T) {
	d, log, src, dst := einvalDevice(t)
	if k, err := d.Write(packetBufs(testutil.UDPPacket(src, dst, 7001, 7000, []byte("single")))); err != nil || k != 1 {
		t.Fatalf("single-packet write: %d, %v", k, err)
	}
	if !log.Await("single", 3*time.Second) {
		t.Fatal("the single packet never arrived")
	}
	if m := d.Mode(); !m.GROWrite || m.Fallback != "" {
		t.Fatalf("mode after a single-packet write: %+v", m)
	}
}
