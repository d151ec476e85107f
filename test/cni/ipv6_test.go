package cni

import (
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// An IPv4-only pod has IPv6 disabled on eth0 and on its host veth: no
// link-local address, and IPv6 frames another pod on the bridge sends to
// it (unicast to its link-local address, or to ff02::1) never reach a
// socket on [::] (policy only polices IPv4, so that path bypassed it).
// IPv4 between the pods still works. A dual-stack pod keeps IPv6 and gets
// the same frames, which shows the raw sender works.
func TestIPv4OnlyPodHasNoIPv6(t *testing.T) {
	t.Run("ipv4-only", func(t *testing.T) {
		e := newEnv(t)
		l := e.confList("1.1.0", e.weftConf("weft-ipam"))
		a, b := e.newPod("a"), e.newPod("b")
		ra, rb := e.mustAdd(l, a), e.mustAdd(l, b)

		for _, p := range []*pod{a, b} {
			if err := p.ns.Do(func(ns.NetNS) error { return wantNoIPv6("eth0") }); err != nil {
				t.Errorf("pod netns: %v", err)
			}
		}
		if err := e.inErr(func() error { return wantNoIPv6(rb.Interfaces[1].Name) }); err != nil {
			t.Errorf("host veth: %v", err)
		}

		ipB := podIP(t, rb).String()
		if got := udpReceive(t, b, "udp4", "0.0.0.0:9998", func() error {
			return a.ns.Do(func(ns.NetNS) error { return udpSend("udp4", net.JoinHostPort(ipB, "9998")) })
		}, 3*time.Second); got == "" {
			t.Fatalf("pod a -> pod b over IPv4 (%s): nothing received", ipB)
		}
		if got := udpReceive(t, b, "udp6", "[::]:9999", rawIPv6Sender(t, a, b, ra, rb, 9999), 4*time.Second); got != "" {
			t.Fatalf("pod b received an IPv6 packet from pod a on [::]:9999 (%q): IPv6 bypasses IPv4-only policy", got)
		}
		if err := e.check(l, b); err != nil {
			t.Fatalf("CHECK of an IPv4-only pod with IPv6 disabled: %v", err)
		}
		for _, p := range []*pod{a, b} {
			if err := e.del(l, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		}
	})
	t.Run("dual-stack", func(t *testing.T) {
		e := newEnv(t)
		wc := e.weftConf("weft-ipam")
		wc["ipam"].(map[string]any)["ranges"] = [][]map[string]string{{{"subnet": e.subnet}}, {{"subnet": "fd77:2::/64"}}}
		l := e.confList("1.1.0", wc)
		a, b := e.newPod("a"), e.newPod("b")
		ra, rb := e.mustAdd(l, a), e.mustAdd(l, b)
		if err := b.ns.Do(func(ns.NetNS) error { return wantIPv6("eth0") }); err != nil {
			t.Fatalf("dual-stack pod: %v", err)
		}
		if got := udpReceive(t, b, "udp6", "[::]:9999", rawIPv6Sender(t, a, b, ra, rb, 9999), 4*time.Second); got == "" {
			t.Fatal("dual-stack pod b received no IPv6 frame from pod a: IPv6 broken, or the raw sender does not work")
		}
		if err := e.check(l, b); err != nil {
			t.Fatalf("CHECK of a dual-stack pod: %v", err)
		}
	})
}

// ipv6State reads, in the calling thread's netns, ifName's disable_ipv6
// sysctl and its IPv6 addresses.
func ipv6State(ifName string) (string, []netlink.Addr, error) {
	b, err := os.ReadFile(filepath.Join("/proc/sys/net/ipv6/conf", ifName, "disable_ipv6"))
	if err != nil {
		return "", nil, err
	}
	l, err := netlink.LinkByName(ifName)
	if err != nil {
		return "", nil, err
	}
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	return strings.TrimSpace(string(b)), addrs, err
}

// wantNoIPv6 checks that IPv6 is disabled on ifName and that it holds no
// IPv6 address.
func wantNoIPv6(ifName string) error {
	v, addrs, err := ipv6State(ifName)
	if err != nil {
		return err
	}
	if v != "1" || len(addrs) != 0 {
		return fmt.Errorf("%s: disable_ipv6 = %s, IPv6 addresses %v; want 1 and none", ifName, v, addrs)
	}
	return nil
}

// wantIPv6 checks that IPv6 is on for ifName and that it holds a global
// IPv6 address.
func wantIPv6(ifName string) error {
	v, addrs, err := ipv6State(ifName)
	if err != nil {
		return err
	}
	for _, a := range addrs {
		if v == "0" && a.IP.IsGlobalUnicast() {
			return nil
		}
	}
	return fmt.Errorf("%s: disable_ipv6 = %s, IPv6 addresses %v; want 0 and a global address", ifName, v, addrs)
}

// udpReceive listens on addr in p's netns, calls send every 100ms until
// something arrives or d passes, and returns what arrived ("" for nothing).
func udpReceive(t *testing.T, p *pod, network, addr string, send func() error, d time.Duration) string {
	t.Helper()
	var c net.PacketConn
	if err := p.ns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	}); err != nil {
		t.Fatalf("listen %s %s in pod: %v", network, addr, err)
	}
	defer c.Close()
	got := make(chan string, 1)
	go func() {
		buf := make([]byte, 512)
		_ = c.SetReadDeadline(time.Now().Add(d))
		n, _, err := c.ReadFrom(buf)
		if err != nil {
			got <- ""
			return
		}
		got <- string(buf[:n])
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := send(); err != nil {
			t.Fatalf("send: %v", err)
		}
		select {
		case s := <-got:
			return s
		case <-tick.C:
		}
	}
}

func udpSend(network, addr string) error {
	c, err := net.Dial(network, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte("v4 hello"))
	return err
}

// rawIPv6Sender returns a sender that writes, from pod a's eth0 through an
// AF_PACKET socket (so whether a itself has IPv6 does not matter), two
// IPv6/UDP frames to port: one to b's MAC and link-local address (the one
// b holds, else the EUI-64 one its MAC gives), one to ff02::1.
func rawIPv6Sender(t *testing.T, a, b *pod, ra, rb *current.Result, port uint16) func() error {
	t.Helper()
	macA, err := net.ParseMAC(ra.Interfaces[2].Mac)
	if err != nil {
		t.Fatal(err)
	}
	macB, err := net.ParseMAC(rb.Interfaces[2].Mac)
	if err != nil {
		t.Fatal(err)
	}
	dstB := eui64LinkLocal(macB)
	_ = b.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V6)
		for _, ad := range addrs {
			if ad.IP.IsLinkLocalUnicast() {
				dstB = ad.IP
			}
		}
		return nil
	})
	src := eui64LinkLocal(macA)
	allNodes := net.ParseIP("ff02::1")
	frames := [][]byte{
		ipv6UDPFrame(macA, macB, src, dstB, port, []byte("v6 unicast")),
		ipv6UDPFrame(macA, net.HardwareAddr{0x33, 0x33, 0, 0, 0, 1}, src, allNodes, port, []byte("v6 all-nodes")),
	}
	var fd, ifIndex int
	err = a.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		ifIndex = l.Attrs().Index
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, int(htons(unix.ETH_P_IPV6)))
		return err
	})
	if err != nil {
		t.Fatalf("raw socket in pod a: %v", err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return func() error {
		for _, f := range frames {
			sa := &unix.SockaddrLinklayer{Ifindex: ifIndex, Protocol: htons(unix.ETH_P_IPV6), Halen: 6}
			copy(sa.Addr[:], f[:6])
			if err := unix.Sendto(fd, f, 0, sa); err != nil {
				return fmt.Errorf("raw send from pod a: %w", err)
			}
		}
		return nil
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

func eui64LinkLocal(mac net.HardwareAddr) net.IP {
	ip := make(net.IP, 16)
	ip[0], ip[1] = 0xfe, 0x80
	ip[8], ip[9], ip[10], ip[11], ip[12] = mac[0]^2, mac[1], mac[2], 0xff, 0xfe
	copy(ip[13:], mac[3:6])
	return ip
}

// ipv6UDPFrame builds an Ethernet frame holding an IPv6/UDP datagram with
// a valid checksum (the kernel drops IPv6 UDP with checksum 0).
func ipv6UDPFrame(srcMAC, dstMAC net.HardwareAddr, src, dst net.IP, port uint16, data []byte) []byte {
	udpLen := 8 + len(data)
	f := make([]byte, 14+40+udpLen)
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IPV6)
	ip := f[14:]
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(udpLen))
	ip[6], ip[7] = unix.IPPROTO_UDP, 255
	copy(ip[8:24], src.To16())
	copy(ip[24:40], dst.To16())
	u := ip[40:]
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], port)
	binary.BigEndian.PutUint16(u[4:], uint16(udpLen))
	copy(u[8:], data)
	var sum uint32
	add := func(b []byte) {
		for i := 0; i+1 < len(b); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(b[i:]))
		}
		if len(b)%2 == 1 {
			sum += uint32(b[len(b)-1]) << 8
		}
	}
	add(ip[8:40])
	sum += uint32(udpLen) + unix.IPPROTO_UDP
	add(u)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	cs := ^uint16(sum)
	if cs == 0 {
		cs = 0xffff
	}
	binary.BigEndian.PutUint16(u[6:], cs)
	return f
}
