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
	rx     rawRx
	// txMu guards tx (Send may be called from several goroutines).
	txMu sync.Mutex
	tx   rawTx
}

var _ Conn = (*RawSocket)(nil)

const (
	rawBatch  = 128
	rawBuffer = 8 << 20
)

// mmsghdr is struct mmsghdr.
type mmsghdr struct {
	hdr unix.Msghdr
	n   uint32
	_   [4]byte
}

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
	for _, o := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF, unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o, rawBuffer)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: local.As4()}); err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("ipip socket: bind %s: %w", local, err)
	}
	s := &RawSocket{f: os.NewFile(uintptr(fd), "ipip")}
	if s.rc, err = s.f.SyscallConn(); err != nil {
		_ = s.f.Close()
		return nil, fmt.Errorf("ipip socket: %w", err)
	}
	s.rx.init()
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

type rawRx struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	want  int
	got   int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func (r *rawRx) init() {
	r.hdrs, r.iovs = make([]mmsghdr, rawBatch), make([]unix.Iovec, rawBatch)
	r.fn = func(fd uintptr) bool {
		n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&r.hdrs[0])), uintptr(r.want), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false
		}
		r.got, r.errno = int(n), e
		return true
	}
}

// Recv implements Conn (one caller at a time).
func (s *RawSocket) Recv(bufs [][]byte, sizes []int) (int, error) {
	r := &s.rx
	r.want = min(len(bufs), rawBatch)
	for i := range r.want {
		r.iovs[i] = unix.Iovec{Base: &bufs[i][0]}
		r.iovs[i].SetLen(len(bufs[i]))
		r.hdrs[i].hdr = unix.Msghdr{Iov: &r.iovs[i]}
		r.hdrs[i].hdr.SetIovlen(1)
	}
	if err := s.rc.Read(r.fn); err != nil {
		return 0, s.ioErr(err)
	}
	if r.errno != 0 {
		return 0, r.errno
	}
	for i := range r.got {
		sizes[i] = int(r.hdrs[i].n)
	}
	return r.got, nil
}

type rawTx struct {
	hdrs  []mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	start int
	n     int
	sent  int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func (t *rawTx) init() {
	t.hdrs, t.iovs = make([]mmsghdr, rawBatch), make([]unix.Iovec, rawBatch)
	t.names = make([]unix.RawSockaddrInet4, rawBatch)
	t.fn = func(fd uintptr) bool {
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(unsafe.Pointer(&t.hdrs[t.start])), uintptr(t.n-t.start), unix.MSG_DONTWAIT, 0, 0)
		if e == unix.EAGAIN || e == unix.EINTR {
			return false
		}
		t.sent, t.errno = int(n), e
		if e != 0 {
			t.sent = 0
		}
		return true
	}
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
	t.n = len(pkts)
	for i, p := range pkts {
		if len(p) == 0 {
			return len(pkts), errors.New("ipip socket: empty packet")
		}
		t.names[i] = unix.RawSockaddrInet4{Family: unix.AF_INET, Addr: dsts[i].As4()}
		t.iovs[i] = unix.Iovec{Base: &p[0]}
		t.iovs[i].SetLen(len(p))
		t.hdrs[i].hdr = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&t.names[i])), Namelen: unix.SizeofSockaddrInet4, Iov: &t.iovs[i]}
		t.hdrs[i].hdr.SetIovlen(1)
	}
	failed := 0
	var last error
	for t.start = 0; t.start < t.n; {
		if err := s.rc.Write(t.fn); err != nil {
			return failed + t.n - t.start, s.ioErr(err)
		}
		if t.errno != 0 || t.sent <= 0 { // message t.start was refused: skip it
			failed++
			if t.errno != 0 {
				last = t.errno
			}
			t.start++
			continue
		}
		t.start += t.sent
	}
	return failed, last
}
