package ipip

import "net/netip"

// Conn is the tunnel's side of the underlay: IP-in-IP packets in and out.
// RawSocket is the real one, FakeNet's the in-memory one.
type Conn interface {
	// Recv receives up to len(bufs) IP-in-IP packets, each as it came off
	// the wire (outer IPv4 header, then the inner packet), blocking until
	// at least one is there. It returns how many, sizes[i] their lengths.
	Recv(bufs [][]byte, sizes []int) (int, error)
	// Send sends each inner packet pkts[i] to the underlay address
	// dsts[i] (the outer header is the Conn's business). It returns how
	// many it could not send and the last error.
	Send(pkts [][]byte, dsts []netip.Addr) (failed int, err error)
	// BatchSize is the most packets one Recv returns.
	BatchSize() int
	Close() error
}
