package udp

import (
	"net"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/conn"
)

// FakeNet is an in-memory underlay for rootless tests: each Bind it hands
// out has an address; a Send to address:port reaches the Bind opened there.
type FakeNet struct {
	mu    sync.Mutex
	binds map[netip.AddrPort]*FakeBind
}

// NewFakeNet returns an empty underlay.
func NewFakeNet() *FakeNet { return &FakeNet{binds: map[netip.AddrPort]*FakeBind{}} }

// Bind returns a conn.Bind with underlay address addr, not yet open.
func (n *FakeNet) Bind(addr netip.Addr) *FakeBind {
	return &FakeBind{net: n, addr: addr}
}

type datagram struct {
	from    netip.AddrPort
	payload []byte
}

// FakeBind is one node's socket on a FakeNet.
type FakeBind struct {
	net  *FakeNet
	addr netip.Addr

	mu     sync.Mutex
	port   uint16
	in     chan datagram
	closed chan struct{}
	sends  int
}

var _ conn.Bind = (*FakeBind)(nil)

// Open implements conn.Bind: one receive function.
func (b *FakeBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	b.mu.Lock()
	b.port, b.in, b.closed = port, make(chan datagram, 4096), make(chan struct{})
	in, closed := b.in, b.closed
	b.mu.Unlock()
	b.net.mu.Lock()
	b.net.binds[netip.AddrPortFrom(b.addr, port)] = b
	b.net.mu.Unlock()
	recv := func(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
		var d datagram
		select {
		case d = <-in:
		case <-closed:
			return 0, net.ErrClosed
		}
		for n := 0; ; n++ {
			sizes[n] = copy(bufs[n], d.payload)
			eps[n] = &conn.StdNetEndpoint{AddrPort: d.from}
			if n+1 == len(bufs) {
				return n + 1, nil
			}
			select {
			case d = <-in:
			default:
				return n + 1, nil
			}
		}
	}
	return []conn.ReceiveFunc{recv}, port, nil
}

// Close implements conn.Bind.
func (b *FakeBind) Close() error {
	b.net.mu.Lock()
	delete(b.net.binds, netip.AddrPortFrom(b.addr, b.port))
	b.net.mu.Unlock()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed != nil {
		select {
		case <-b.closed:
		default:
			close(b.closed)
		}
	}
	return nil
}

// SetMark implements conn.Bind.
func (b *FakeBind) SetMark(uint32) error { return nil }

// Send implements conn.Bind: every buffer is one datagram.
func (b *FakeBind) Send(bufs [][]byte, ep conn.Endpoint) error {
	dst := ep.(*conn.StdNetEndpoint).AddrPort
	b.mu.Lock()
	b.sends++
	from := netip.AddrPortFrom(b.addr, b.port)
	b.mu.Unlock()
	for _, p := range bufs {
		b.net.Deliver(from, dst, p)
	}
	return nil
}

// Sends is the number of Send calls so far.
func (b *FakeBind) Sends() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.sends
}

// Deliver puts a datagram from "from" on the wire to dst (any sender, a
// forger included); it is lost when nobody listens there.
func (n *FakeNet) Deliver(from, dst netip.AddrPort, payload []byte) {
	n.mu.Lock()
	b := n.binds[dst]
	n.mu.Unlock()
	if b == nil {
		return
	}
	select {
	case b.in <- datagram{from: from, payload: append([]byte(nil), payload...)}:
	case <-b.closed:
	}
}

// ParseEndpoint implements conn.Bind.
func (b *FakeBind) ParseEndpoint(s string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	return &conn.StdNetEndpoint{AddrPort: ap}, nil
}

// BatchSize implements conn.Bind.
func (b *FakeBind) BatchSize() int { return conn.IdealBatchSize }
