package ipip

import (
	"encoding/binary"
	"net"
	"net/netip"
	"sync"
)

// FakeNet is an in-memory underlay for rootless tests: Conn(addr) is a
// node's raw socket; what it sends reaches the Conn of the destination
// address with an outer IPv4 header (protocol 4) as the kernel would add.
type FakeNet struct {
	mu    sync.Mutex
	conns map[netip.Addr]*FakeConn
}

// NewFakeNet returns an empty underlay.
func NewFakeNet() *FakeNet { return &FakeNet{conns: map[netip.Addr]*FakeConn{}} }

// FakeConn is one node's socket on a FakeNet.
type FakeConn struct {
	net    *FakeNet
	addr   netip.Addr
	in     chan []byte
	closed chan struct{}
	once   sync.Once
}

var _ Conn = (*FakeConn)(nil)

// Conn returns the socket of underlay address addr.
func (n *FakeNet) Conn(addr netip.Addr) *FakeConn {
	c := &FakeConn{net: n, addr: addr, in: make(chan []byte, 4096), closed: make(chan struct{})}
	n.mu.Lock()
	n.conns[addr] = c
	n.mu.Unlock()
	return c
}

// Outer returns inner wrapped in the outer IPv4 header src -> dst,
// protocol 4 (checksum filled in), as on the wire.
func Outer(src, dst netip.Addr, inner []byte) []byte {
	p := make([]byte, 20+len(inner))
	p[0], p[8], p[9] = 0x45, 64, Protocol
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	s, d := src.As4(), dst.As4()
	copy(p[12:16], s[:])
	copy(p[16:20], d[:])
	binary.BigEndian.PutUint16(p[10:], ^headerSum(p[:20]))
	copy(p[20:], inner)
	return p
}

// Deliver puts a whole packet (outer header included: any sender, a
// forger too) on the wire to the socket of its outer destination; it is
// lost when there is none.
func (n *FakeNet) Deliver(pkt []byte) {
	if len(pkt) < 20 {
		return
	}
	n.mu.Lock()
	c := n.conns[netip.AddrFrom4([4]byte(pkt[16:20]))]
	n.mu.Unlock()
	if c == nil {
		return
	}
	select {
	case c.in <- append([]byte(nil), pkt...):
	case <-c.closed:
	}
}

// Recv implements Conn.
func (c *FakeConn) Recv(bufs [][]byte, sizes []int) (int, error) {
	var p []byte
	select {
	case p = <-c.in:
	case <-c.closed:
		return 0, net.ErrClosed
	}
	for k := 0; ; k++ {
		sizes[k] = copy(bufs[k], p)
		if k+1 == len(bufs) {
			return k + 1, nil
		}
		select {
		case p = <-c.in:
		default:
			return k + 1, nil
		}
	}
}

// Send implements Conn.
func (c *FakeConn) Send(pkts [][]byte, dsts []netip.Addr) (int, error) {
	for i, p := range pkts {
		c.net.Deliver(Outer(c.addr, dsts[i], p))
	}
	return 0, nil
}

// BatchSize implements Conn.
func (c *FakeConn) BatchSize() int { return 64 }

// Close implements Conn.
func (c *FakeConn) Close() error {
	c.once.Do(func() { close(c.closed) })
	return nil
}
