package udp

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net/netip"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap"
)

func openSocket(t *testing.T) (*Socket, conn.ReceiveFunc, uint16) {
	t.Helper()
	s := NewSocket()
	fns, port, err := s.Open(0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, fns[0], port
}

// receiveN receives until n datagrams arrived (or 3 s passed).
func receiveN(t *testing.T, recv conn.ReceiveFunc, n int) ([][]byte, []netip.AddrPort) {
	t.Helper()
	bufs := uencap.Buffers(batchSize)
	sizes, eps := make([]int, batchSize), make([]conn.Endpoint, batchSize)
	var got [][]byte
	var from []netip.AddrPort
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(got) < n {
			k, err := recv(bufs, sizes, eps)
			if err != nil {
				return
			}
			for i := range k {
				got = append(got, bytes.Clone(bufs[i][:sizes[i]]))
				from = append(from, eps[i].(*conn.StdNetEndpoint).AddrPort)
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(3 * time.Second):
		t.Fatalf("received %d of %d datagrams", len(got), n)
	}
	return got, from
}

// TestSocketBatches sends runs of equal sizes (segmented sends) and odd
// sizes over loopback and gets every datagram back whole, in order, from
// the sender's address.
func TestSocketBatches(t *testing.T) {
	a, _, aport := openSocket(t)
	b, recv, bport := openSocket(t)
	gro, gso := b.Offloads()
	t.Logf("gro %v gso %v", gro, gso)
	var want [][]byte
	for i, size := range []int{1000, 1000, 1000, 1000, 500, 200, 1400, 1400, 1, 1400} {
		p := bytes.Repeat([]byte{byte(i)}, size)
		want = append(want, p)
	}
	for range 3 { // 64+ equal datagrams: more than one segmented message
		for i := range 30 {
			want = append(want, bytes.Repeat([]byte{byte(100 + i)}, 1200))
		}
	}
	ep, _ := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", bport))
	for i := 0; i < len(want); i += 50 {
		bufs := make([][]byte, 0, 50)
		for _, p := range want[i:min(i+50, len(want))] {
			b := make([]byte, len(p), tun.BufSize) // spare capacity, as the relay's buffers have
			copy(b, p)
			bufs = append(bufs, b)
		}
		if err := a.Send(bufs, ep); err != nil {
			t.Fatal(err)
		}
	}
	got, from := receiveN(t, recv, len(want))
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("datagram %d: %d bytes %x..., want %d bytes %x...", i, len(got[i]), got[i][:1], len(want[i]), want[i][:1])
		}
		if from[i] != netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), aport) {
			t.Fatalf("datagram %d from %s", i, from[i])
		}
	}
}

// TestSocketDoesNotAllocate: a send and a receive of a batch allocate
// nothing once the socket is open.
func TestSocketDoesNotAllocate(t *testing.T) {
	a, _, _ := openSocket(t)
	_, recv, bport := openSocket(t)
	ep, _ := a.ParseEndpoint(fmt.Sprintf("127.0.0.1:%d", bport))
	out := uencap.Buffers(8)
	for i := range out {
		out[i] = out[i][:1300]
	}
	in := uencap.Buffers(batchSize)
	sizes, eps := make([]int, batchSize), make([]conn.Endpoint, batchSize)
	allocs := testing.AllocsPerRun(50, func() {
		if err := a.Send(out, ep); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			k, err := recv(in, sizes, eps)
			if err != nil {
				t.Fatal(err)
			}
			got += k
		}
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per batch", allocs)
	}
}

func TestGROSize(t *testing.T) {
	oob := make([]byte, unix.CmsgSpace(4)*2)
	put := func(at int, level, typ int32, v uint32) {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[at]))
		h.Level, h.Type = level, typ
		h.SetLen(unix.CmsgLen(4))
		binary.NativeEndian.PutUint32(oob[at+unix.CmsgLen(0):], v)
	}
	put(0, unix.IPPROTO_IP, unix.IP_PKTINFO, 7)
	put(unix.CmsgSpace(4), unix.IPPROTO_UDP, unix.UDP_GRO, 1400)
	if got := groSize(oob); got != 1400 {
		t.Fatalf("gro size %d, want 1400 (second message)", got)
	}
	if got := groSize(oob[:unix.CmsgSpace(4)]); got != 0 {
		t.Fatalf("gro size %d without a UDP_GRO message", got)
	}
	bad := append([]byte(nil), oob...)
	(*unix.Cmsghdr)(unsafe.Pointer(&bad[0])).SetLen(len(bad) + 1) // claims more than there is
	if got := groSize(bad); got != 0 {
		t.Fatalf("gro size %d from a malformed control message", got)
	}
}
