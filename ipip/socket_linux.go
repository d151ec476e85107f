package ipip

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/uencap"
)

// RawSocket is an AF_INET SOCK_RAW socket of protocol 4 bound to the
// node's underlay address: a send hands the kernel the inner packet and
// the kernel prepends the outer IPv4 header (protocol 4, this node's
// source); a receive returns outer header and inner packet of every
// IP-in-IP packet addressed to the bound address. Both directions are
// batched (recvmmsg, sendmmsg) over message headers allocated once. The
// receive buffer is large (8 MiB): a raw socket that falls behind drops.
type RawSocket struct {
	f  *os.File
	rc syscall.RawConn
	// closed: RawConn calls on a closed file fail with poll's own
	// "use of closed file", which matches no exported error.
	closed atomic.Bool
	rx     *uencap.MsgBatch
	// txMu guards tx (Send may be called from several goroutines).
	txMu sync.Mutex
	tx   rawTx
}

var _ Conn = (*RawSocket)(nil)

const (
	rawBatch  = 128
	rawBuffer = 8 << 20
)

// OpenRawSocket opens the socket in the calling thread's network
// namespace, bound to local (IPv4).
func OpenRawSocket(local netip.Addr) (*RawSocket, error) {
	local = local.Unmap()
	if !local.Is4() {
		return nil, fmt.Errorf("ipip socket: local address %v is not IPv4", local)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, Protocol)
	if err != nil {
		return nil, fmt.Errorf("ipip socket: %w", err)
	}
	uencap.SetBuffers(fd, rawBuffer)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.As4()}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("ipip socket: bind %s: %w", local, err)
	}
	s := &RawSocket{f: os.NewFile(uintptr(fd), "ipip")}
	if s.rc, err = s.f.SyscallConn(); err != nil {
		_ = s.f.Close()
		return nil, fmt.Errorf("ipip socket: %w", err)
	}
	s.rx = uencap.NewMsgBatch(rawBatch)
	s.tx.init()
	return s, nil
}

// BatchSize implements Conn.
func (s *RawSocket) BatchSize() int { return rawBatch }

// Close implements Conn; a blocked Recv returns net.ErrClosed.
func (s *RawSocket) Close() error {
	s.closed.Store(true)
	return s.f.Close()
}

// ioErr is err from the RawConn, net.ErrClosed once the socket is closed.
func (s *RawSocket) ioErr(err error) error {
	if s.closed.Load() {
		return fmt.Errorf("ipip socket: %w", net.ErrClosed)
	}
	return fmt.Errorf("ipip socket: %w", err)
}

// Recv implements Conn (one caller at a time).
func (s *RawSocket) Recv(bufs [][]byte, sizes []int) (int, error) {
	r := s.rx
	want := min(len(bufs), rawBatch)
	for i := range want {
		r.Iovs[i] = unix.Iovec{Base: &bufs[i][0]}
		r.Iovs[i].SetLen(len(bufs[i]))
		r.Hdrs[i].Hdr = unix.Msghdr{Iov: &r.Iovs[i]}
		r.Hdrs[i].Hdr.SetIovlen(1)
	}
	got, err := r.Recv(s.rc, want)
	if err != nil {
		return 0, s.ioErr(err)
	}
	for i := range got {
		sizes[i] = int(r.Hdrs[i].N)
	}
	return got, nil
}

type rawTx struct {
	*uencap.MsgBatch
	names []unix.RawSockaddrInet4
}

func (t *rawTx) init() {
	t.MsgBatch = uencap.NewMsgBatch(rawBatch)
	t.names = make([]unix.RawSockaddrInet4, rawBatch)
}

// Send implements Conn: one sendmmsg for the whole batch (each message
// carries its own destination); a message the kernel refuses is counted
// as failed and the rest still go.
func (s *RawSocket) Send(pkts [][]byte, dsts []netip.Addr) (int, error) {
	s.txMu.Lock()
	defer s.txMu.Unlock()
	failed := 0
	var last error
	for len(pkts) > 0 {
		k := min(len(pkts), rawBatch)
		f, err := s.sendBatch(pkts[:k], dsts[:k])
		failed += f
		if err != nil {
			last = err
		}
		pkts, dsts = pkts[k:], dsts[k:]
	}
	return failed, last
}

func (s *RawSocket) sendBatch(pkts [][]byte, dsts []netip.Addr) (int, error) {
	t := &s.tx
	n := len(pkts)
	for i, p := range pkts {
		if len(p) == 0 {
			return len(pkts), errors.New("ipip socket: empty packet")
		}
		t.names[i] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dsts[i].As4()}
		t.Iovs[i] = unix.Iovec{Base: &p[0]}
		t.Iovs[i].SetLen(len(p))
		t.Hdrs[i].Hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&t.names[i])), Namelen: unix.SizeofSockaddrInet4, Iov: &t.Iovs[i]}
		t.Hdrs[i].Hdr.SetIovlen(1)
	}
	failed := 0
	var last error
	for start := 0; start < n; {
		sent, err := t.Send(s.rc, start, n)
		var errno syscall.Errno
		if err != nil && !errors.As(err, &errno) { // the RawConn's: the socket is closed
			return failed + n - start, s.ioErr(err)
		}
		if sent <= 0 { // message start was refused: skip it
			failed++
			if err != nil {
				last = err
			}
			start++
			continue
		}
		start += sent
	}
	return failed, last
}
