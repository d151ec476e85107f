package uencap

import (
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Mmsghdr is struct mmsghdr.
type Mmsghdr struct {
	Hdr unix.Msghdr
	N   uint32
	_   [4]byte
}

// MsgBatch is one direction of a batched socket: message headers and
// iovecs allocated once, and recvmmsg/sendmmsg run over them through the
// socket's RawConn (which waits in the runtime's poller), so a batch
// costs one system call and no allocation. The caller fills Hdrs and
// Iovs; one caller at a time.
type MsgBatch struct {
	Hdrs []Mmsghdr
	Iovs []unix.Iovec

	start, n, done int
	errno          syscall.Errno
	recvFn, sendFn func(fd uintptr) bool
}

// NewMsgBatch returns a batch of n messages.
func NewMsgBatch(n int) *MsgBatch {
	b := &MsgBatch{Hdrs: make([]Mmsghdr, n), Iovs: make([]unix.Iovec, n)}
	b.recvFn = func(fd uintptr) bool { return b.call(unix.SYS_RECVMMSG, fd) }
	b.sendFn = func(fd uintptr) bool { return b.call(unix.SYS_SENDMMSG, fd) }
	return b
}

// call runs one non-blocking recvmmsg or sendmmsg over Hdrs[start:n];
// false (EAGAIN, EINTR) has the RawConn wait and call again.
func (b *MsgBatch) call(trap, fd uintptr) bool {
	n, _, e := unix.Syscall6(trap, fd, uintptr(unsafe.Pointer(&b.Hdrs[b.start])), uintptr(b.n-b.start), unix.MSG_DONTWAIT, 0, 0)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	b.done, b.errno = int(n), e
	if e != 0 {
		b.done = 0
	}
	return true
}

// Recv receives into Hdrs[:n], blocking until at least one message is
// there, and returns how many came (each one's length in Hdrs[i].N). The
// error is the RawConn's (the socket is closed, say) or the call's
// syscall.Errno.
func (b *MsgBatch) Recv(rc syscall.RawConn, n int) (int, error) {
	b.start, b.n = 0, n
	if err := rc.Read(b.recvFn); err != nil {
		return 0, err
	}
	return b.result()
}

// Send sends Hdrs[start:n] with one sendmmsg (waiting while the socket
// buffer is full) and returns how many went; the error is as Recv's. A
// message the kernel refuses ends the call with its errno.
func (b *MsgBatch) Send(rc syscall.RawConn, start, n int) (int, error) {
	b.start, b.n = start, n
	if err := rc.Write(b.sendFn); err != nil {
		return 0, err
	}
	return b.result()
}

func (b *MsgBatch) result() (int, error) {
	if b.errno != 0 {
		return 0, b.errno
	}
	return b.done, nil
}

// SetBuffers sets the socket's receive and send buffers to size, beyond
// the sysctl limits where the process may (SO_*BUFFORCE); best effort.
func SetBuffers(fd int, size int) {
	for _, o := range []int{unix.SO_RCVBUF, unix.SO_SNDBUF, unix.SO_RCVBUFFORCE, unix.SO_SNDBUFFORCE} {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, o, size)
	}
}
