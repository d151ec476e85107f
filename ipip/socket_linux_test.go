package ipip

import (
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

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
