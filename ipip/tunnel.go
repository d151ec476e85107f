package ipip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/internal/tun"
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
}

// Tunnel is userspace IP-in-IP between a TUN device and a raw socket.
type Tunnel struct {
	dev   tun.Device
	conn  Conn
	log   *slog.Logger
	table atomic.Pointer[Table]

	tx, rx     flow
	drops      [numReasons]atomic.Uint64
	recvErrors atomic.Uint64
	// stopping is set before Run closes the device and the socket, so the
	// loops tell those closes from a device or socket that went away.
	stopping atomic.Bool
}

// errorPause keeps a loop that keeps failing from spinning.
const errorPause = 10 * time.Millisecond

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
	t := &Tunnel{dev: o.Device, conn: o.Conn, log: o.Log}
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
	s := Stats{Mode: Userspace, Tx: t.tx.load(), Rx: t.rx.load(), Drops: map[string]uint64{},
		TUNMode: t.dev.Mode().String(), Errors: t.recvErrors.Load(), Peers: t.table.Load().Peers()}
	for _, r := range Reasons() {
		if n := t.drops[r].Load(); n > 0 {
			s.Drops[r.String()] = n
		}
	}
	return s
}

// Close closes the device and the socket of a tunnel that never ran.
func (t *Tunnel) Close() error {
	return errors.Join(t.conn.Close(), t.dev.Close())
}

// Run moves packets until ctx ends or a loop cannot go on (the device or
// the socket went away), then closes both and returns once both loops
// have stopped. It returns nil when ctx ended it.
func (t *Tunnel) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	fail := make(chan error, 2)
	for name, loop := range map[string]func() error{"tun to ipip": t.encapLoop, "ipip to tun": t.decapLoop} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := loop(); err != nil {
				fail <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-fail:
		t.log.Error("ipip tunnel stopped", "err", err)
	}
	t.stopping.Store(true)
	_ = t.Close()
	wg.Wait()
	return err
}

// loopErr decides what a failed read means: stop quietly when Run is
// closing, stop with the error when the device or socket went away, else
// count it, pause briefly and go on.
func (t *Tunnel) loopErr(err error) (stop bool, _ error) {
	if t.stopping.Load() {
		return true, nil // whatever a closed fd returns (EBADF, "use of closed file")
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		if t.stopping.Load() {
			return true, nil
		}
		return true, err
	}
	t.recvErrors.Add(1)
	time.Sleep(errorPause)
	return false, nil
}
