package udp

import (
	"errors"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap"
)

// group is the packets of one batch that go to one peer.
type group struct {
	peer int
	pkts [][]byte
}

// grouper splits a batch by peer, keeping each peer's packets in order.
// Its slices grow to the largest batch seen and are reused.
type grouper struct {
	groups []group
	n      int
}

func (g *grouper) reset() {
	for i := range g.n {
		g.groups[i].pkts = g.groups[i].pkts[:0]
	}
	g.n = 0
}

func (g *grouper) add(peer int, pkt []byte) {
	for i := range g.n {
		if g.groups[i].peer == peer {
			g.groups[i].pkts = append(g.groups[i].pkts, pkt)
			return
		}
	}
	if g.n == len(g.groups) {
		g.groups = append(g.groups, group{})
	}
	g.groups[g.n].peer = peer
	g.groups[g.n].pkts = append(g.groups[g.n].pkts, pkt)
	g.n++
}

// encapLoop reads the TUN and sends each packet to the node owning its
// destination, one Send per peer per batch.
func (r *Relay) encapLoop() error {
	var g grouper
	return r.pump.ReadTUN(func(pkts [][]byte) { r.encapBatch(r.table.Load(), pkts, &g) })
}

// encapBatch groups the packets by peer and sends each group in one call.
func (r *Relay) encapBatch(t *Table, pkts [][]byte, g *grouper) {
	g.reset()
	var noRoute uint64
	for _, pkt := range pkts {
		dst, ok := innerDst(pkt)
		peer := -1
		if ok {
			peer = t.lookup(dst)
		}
		if peer < 0 || t.peers[peer].ep == nil {
			noRoute++
			continue
		}
		g.add(peer, pkt)
	}
	r.pump.Drop(DropNoRoute, noRoute)
	for _, gr := range g.groups[:g.n] {
		bytes := 0
		for _, p := range gr.pkts {
			bytes += len(p)
		}
		err := r.bind.Send(gr.pkts, t.peers[gr.peer].ep)
		var gsoOff conn.ErrUDPGSODisabled
		if errors.As(err, &gsoOff) {
			if !r.gsoOff.Swap(true) {
				r.pump.Logger().Warn("UDP GSO refused by the socket, sending one datagram per message", "err", err)
			}
			err = gsoOff.RetryErr
		}
		if err != nil {
			r.pump.Drop(DropSend, uint64(len(gr.pkts)))
			continue
		}
		r.pump.Tx.Batch(len(gr.pkts), bytes)
	}
}

// decapLoop receives datagrams (past the TUN headroom) and writes the
// valid packets into the TUN.
func (r *Relay) decapLoop(recv conn.ReceiveFunc) error {
	eps := make([]conn.Endpoint, r.bind.BatchSize())
	return r.pump.RecvLoop(len(eps), tun.Offset,
		func(bufs [][]byte, sizes []int) (int, error) { return recv(bufs, sizes, eps) },
		func(bufs [][]byte, sizes []int, wbufs [][]byte) [][]byte {
			return r.decapBatch(r.table.Load(), bufs, sizes, eps, wbufs)
		})
}

// decapBatch checks every datagram bufs[i][Offset:Offset+sizes[i]] of a
// batch from eps[i] and writes the valid ones into the TUN in one call;
// wbufs is scratch, returned for reuse.
func (r *Relay) decapBatch(t *Table, bufs [][]byte, sizes []int, eps []conn.Endpoint, wbufs [][]byte) [][]byte {
	mtu := r.pump.Dev.MTU()
	return r.pump.Decap(bufs, sizes, tun.Offset, wbufs, func(i int, b []byte) (int, int, uencap.Reason) {
		if sizes[i] == 0 || eps[i] == nil { // a slot the receive left empty
			return 0, 0, OK
		}
		n, reason := t.Check(eps[i].DstIP(), b[tun.Offset:], mtu)
		return tun.Offset, n, reason
	})
}
