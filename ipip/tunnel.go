package ipip

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap"
)

// Options are what a Tunnel runs on.
type Options struct {
	// Device is the TUN weft.ipip (OpenDevice); the tunnel closes it when
	// Run returns.
	Device tun.Device
	// LocalIP is the node's underlay address: the raw socket is bound to
	// it (and the outer source of what is sent).
	LocalIP netip.Addr
	// Conn, when set, replaces the raw socket (FakeNet in tests). When nil
	// NewTunnel opens a RawSocket on LocalIP in the calling thread's
	// network namespace.
	Conn Conn
	Log  *slog.Logger
	// SegmentMTU is the pods' MTU: a merged TCP segment larger than it
	// (super.go) is written as GSO segments, or cut, of that size, since
	// the pod bridge forwards nothing larger. 0 means the device's MTU.
	SegmentMTU int
}

// Tunnel is userspace IP-in-IP between a TUN device and a raw socket.
type Tunnel struct {
	// pump holds the device, the log, the counters and runs the loops.
	pump  uencap.Pump
	conn  Conn
	table atomic.Pointer[Table]

	segMTU int
	// merged counts merged TCP segments larger than the MTU received.
	merged atomic.Uint64
	// gsoRefused: the TUN refused a GSO write; cut merged segments.
	gsoRefused atomic.Bool
	// pool and segs are the receive loop's scratch for cutting them.
	pool, segs [][]byte
}

// NewTunnel opens the raw socket (unless o.Conn is given; it refuses
// where Detect finds the kernel's ipip module) and returns a
// tunnel with an empty table: every packet is dropped (unknown-sender,
// no-route) until SetPeers. Run closes the device and the socket; a caller
// that never calls Run calls Close.
func NewTunnel(o Options) (*Tunnel, error) {
	if o.Device == nil {
		return nil, errors.New("ipip: no device")
	}
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	if o.Conn == nil {
		if err := userspaceAllowed(); err != nil {
			return nil, err
		}
		s, err := OpenRawSocket(o.LocalIP)
		if err != nil {
			return nil, err
		}
		o.Conn = s
	}
	t := &Tunnel{pump: uencap.Pump{Dev: o.Device, Log: o.Log}, conn: o.Conn, segMTU: o.SegmentMTU}
	if t.segMTU <= 0 || t.segMTU > o.Device.MTU() {
		t.segMTU = o.Device.MTU()
	}
	t.table.Store(&Table{byAddr: map[netip.Addr]int{}})
	return t, nil
}

// Mode is the implementation this tunnel is: always Userspace.
func (t *Tunnel) Mode() Mode { return Userspace }

// SetPeers swaps in the table for this node's pod CIDRs and its peers and
// returns what it had to leave out. Packets in flight use the old table or
// the new one, never a mix.
func (t *Tunnel) SetPeers(local []netip.Prefix, peers []Peer) []string {
	tab, problems := NewTable(local, peers)
	t.table.Store(tab)
	return problems
}

// Stats returns a snapshot of the counters.
func (t *Tunnel) Stats() Stats {
	return Stats{Mode: Userspace, Totals: t.pump.Totals(reasons), TUNMode: t.pump.Dev.Mode().String(),
		Peers: t.table.Load().Peers(), Merged: t.merged.Load()}
}

// Close closes the device and the socket of a tunnel that never ran.
func (t *Tunnel) Close() error {
	return errors.Join(t.conn.Close(), t.pump.Dev.Close())
}

// Run moves packets until ctx ends or a loop cannot go on (the device or
// the socket went away), then closes both and returns once both loops
// have stopped. It returns nil when ctx ended it.
func (t *Tunnel) Run(ctx context.Context) error {
	return t.pump.Run(ctx, "ipip tunnel stopped", t.Close,
		uencap.Loop{Name: "tun to ipip", Run: t.encapLoop}, uencap.Loop{Name: "ipip to tun", Run: t.decapLoop})
}
