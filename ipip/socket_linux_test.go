package ipip

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/uencap"
)

// TestRawSocketClose: Close ends a blocked Recv with net.ErrClosed (what
// the tunnel's loops stop on), so a stopping tunnel never hangs.
func TestRawSocketClose(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNS(t)
	var s *RawSocket
	if err := n.Do(func(ns.NetNS) error {
		var err error
		s, err = OpenRawSocket(netip.MustParseAddr("127.0.0.1"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		bufs, sizes := uencap.Buffers(2), make([]int, 2)
		_, err := s.Recv(bufs, sizes)
		done <- err
	}()
	time.Sleep(50 * time.Millisecond)
	_ = s.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Recv after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Recv still blocked after Close")
	}
	if _, err := s.Send([][]byte{{0x45}}, []netip.Addr{netip.MustParseAddr("127.0.0.1")}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Send after Close: %v", err)
	}
}

// TestRawSocketOuterHeader: what Send puts on the wire is an RFC 2003
// packet whose outer header the kernel builds (version 4, no options,
// TOS 0, DF, TTL 64, protocol 4, the bound source, the destination, a
// valid checksum) in front of the inner packet, unchanged. The socket
// receives its own packets over loopback.
func TestRawSocketOuterHeader(t *testing.T) {
	const outerLen = 20
	testutil.RequireRoot(t)
	n := testutil.NewNS(t)
	lo := netip.MustParseAddr("127.0.0.1")
	var s *RawSocket
	if err := n.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(l)
		}
		if err != nil {
			return err
		}
		s, err = OpenRawSocket(lo)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	inner := testutil.UDPPacket(podA, podB, 4000, 9000, make([]byte, 1000))
	if failed, err := s.Send([][]byte{inner, inner[:60]}, []netip.Addr{lo, lo}); failed != 0 || err != nil {
		t.Fatalf("Send: %d failed, %v", failed, err)
	}
	bufs, sizes := uencap.Buffers(2), make([]int, 2)
	timeout := time.AfterFunc(5*time.Second, func() { _ = s.Close() }) // a Recv that waits in vain fails
	defer timeout.Stop()
	got := 0
	for got < 2 {
		k, err := s.Recv(bufs[got:], sizes[got:])
		if err != nil {
			t.Fatal(err)
		}
		got += k
	}
	for i, want := range [][]byte{inner, inner[:60]} {
		p := bufs[i][:sizes[i]]
		if len(p) != outerLen+len(want) {
			t.Fatalf("packet %d: %d bytes, want %d", i, len(p), outerLen+len(want))
		}
		h := p[:outerLen]
		if h[0] != 0x45 || h[1] != 0 || int(h[2])<<8|int(h[3]) != len(p) || h[6]&0x40 == 0 || h[8] != 64 ||
			h[9] != Protocol || netip.AddrFrom4([4]byte(h[12:16])) != lo || netip.AddrFrom4([4]byte(h[16:20])) != lo {
			t.Errorf("packet %d: outer header % x", i, h)
		}
		if headerSum(h) != 0xffff {
			t.Errorf("packet %d: outer header checksum wrong: % x", i, h)
		}
		if string(p[outerLen:]) != string(want) {
			t.Errorf("packet %d: inner packet changed", i)
		}
	}
}
