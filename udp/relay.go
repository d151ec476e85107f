package udp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync/atomic"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap"
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
	// pump holds the device, the log, the counters and runs the loops.
	pump  uencap.Pump
	bind  conn.Bind
	port  uint16
	recv  []conn.ReceiveFunc
	table atomic.Pointer[Table]
	// gsoOff: the socket refused a segmented send (Stats.UDPGSOOff).
	gsoOff atomic.Bool
}

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
	r := &Relay{pump: uencap.Pump{Dev: o.Device, Log: o.Log}, bind: o.Bind, port: o.Port, recv: recv}
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
	s := Stats{Totals: r.pump.Totals(reasons), TUNMode: r.pump.Dev.Mode().String(), UDPGSOOff: r.gsoOff.Load()}
	if o, ok := r.bind.(interface{ Offloads() (gro, gso bool) }); ok {
		gro, gso := o.Offloads()
		s.SocketMode = offloadNames(gso, gro)
	}
	return s
}

// Run relays until ctx ends or a loop cannot go on (the device or the
// socket went away), then closes the socket and the device and returns
// once every loop has stopped. It returns nil when ctx ended it.
func (r *Relay) Run(ctx context.Context) error {
	loops := []uencap.Loop{{Name: "tun to udp", Run: r.encapLoop}}
	for _, recv := range r.recv {
		loops = append(loops, uencap.Loop{Name: "udp to tun", Run: func() error { return r.decapLoop(recv) }})
	}
	return r.pump.Run(ctx, "udp relay stopped", func() error {
		return errors.Join(r.bind.Close(), r.pump.Dev.Close())
	}, loops...)
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
