package bgp

import (
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// listenersAreMPTCP reports whether a default net.ListenConfig makes MPTCP
// sockets in this process (Go ≥ 1.24 on Linux unless GODEBUG
// multipathtcp=0). GoBGP v3 listens that way, and TCP-MD5 cannot be set on
// an MPTCP socket: GoBGP only logs a warning and the passive side of the
// session runs unauthenticated. The module's go.mod turns it off; this
// check makes a binary built otherwise refuse passwords instead of
// ignoring them.
var listenersAreMPTCP = sync.OnceValue(func() bool {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return false
	}
	defer l.Close()
	sc, err := l.(*net.TCPListener).SyscallConn()
	if err != nil {
		return false
	}
	proto := 0
	_ = sc.Control(func(fd uintptr) { proto, _ = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PROTOCOL) })
	return proto == unix.IPPROTO_MPTCP
})
