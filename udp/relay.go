package udp

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

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/tun"
)

// Options are what a Relay runs on.
type Options struct {
	// Device is the TUN (weft.udp); the relay closes it when Run returns.
	Device tun.Device
	// Bind is the UDP socket, not yet open (NewSocket(), or
	// conn.NewStdNetBind() for an IPv6 underlay); the relay opens it on
	// Port and closes it when Run returns.
	Bind conn.Bind
	Port uint16
	Log  *slog.Logger
}

// Relay moves packets between a TUN device and UDP datagrams.
type Relay struct {
	dev   tun.Device
	bind  conn.Bind
	port  uint16
	recv  []conn.ReceiveFunc
	log   *slog.Logger
	table atomic.Pointer[Table]
	c     counters
	// stopping is set before Run closes the device and the socket, so the
	// loops tell those closes from a device or socket that went away.
	stopping atomic.Bool
}

// errorPause keeps a loop that keeps failing from spinning.
const errorPause = 10 * time.Millisecond

// NewRelay opens the socket on o.Port (an error here is a start error:
// the port is taken, say) and returns a relay with an empty table: every
// datagram is dropped as unknown-sender until SetPeers. Run closes the
// device and the socket; a caller that never calls Run closes them itself.
func NewRelay(o Options) (*Relay, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	recv, _, err := o.Bind.Open(o.Port)
	if err != nil {
		return nil, fmt.Errorf("open udp port %d: %w", o.Port, err)
	}
	r := &Relay{dev: o.Device, bind: o.Bind, port: o.Port, recv: recv, log: o.Log}
	r.table.Store(&Table{bySender: map[netip.Addr]int{}, byPrefix: map[netip.Prefix]int{}})
	return r, nil
}

// SetPeers swaps in the table for this node's pod CIDRs and peers, and
// returns what it had to leave out. Packets in flight use the old table
// or the new one, never a mix.
func (r *Relay) SetPeers(local []netip.Prefix, peers []Peer) []string {
	t, problems := NewTable(local, peers, r.port)
	for i := range t.peers {
		ep, err := r.bind.ParseEndpoint(t.peers[i].dst.String())
		if err != nil { // e.g. an IPv6 peer on the IPv4-only Socket
			problems = append(problems, fmt.Sprintf("peer %s: endpoint %s: %v", t.peers[i].name, t.peers[i].dst, err))
			continue
		}
		t.peers[i].ep = ep
	}
	r.table.Store(t)
	return problems
}

// Stats returns a snapshot of the counters.
func (r *Relay) Stats() Stats {
	s := Stats{Tx: r.c.tx.snapshot(), Rx: r.c.rx.snapshot(), Drops: map[string]uint64{},
		TUNMode: r.dev.Mode().String(), UDPGSOOff: r.c.gsoOff.Load(), Errors: r.c.recvErrors.Load()}
	if o, ok := r.bind.(interface{ Offloads() (gro, gso bool) }); ok {
		gro, gso := o.Offloads()
		s.SocketMode = offloadNames(gso, gro)
	}
	for _, reason := range Reasons() {
		if n := r.c.drops[reason].Load(); n > 0 {
			s.Drops[reason.String()] = n
		}
	}
	return s
}

func closedErr(err error) bool { return errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) }

// Run relays until ctx ends or a loop cannot go on (the device or the
// socket went away), then closes the socket and the device and returns
// once every loop has stopped. It returns nil when ctx ended it.
func (r *Relay) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	fail := make(chan error, 1+len(r.recv))
	start := func(name string, loop func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := loop(); err != nil {
				fail <- fmt.Errorf("%s: %w", name, err)
			}
		}()
	}
	start("tun to udp", r.encapLoop)
	for _, recv := range r.recv {
		start("udp to tun", func() error { return r.decapLoop(recv) })
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-fail:
		r.log.Error("udp relay stopped", "err", err)
	}
	r.stopping.Store(true)
	_ = r.bind.Close()
	_ = r.dev.Close()
	wg.Wait()
	return err
}

func offloadNames(gso, gro bool) string {
	switch {
	case gso && gro:
		return "gso+gro"
	case gso:
		return "gso"
	case gro:
		return "gro"
	}
	return "none"
}
