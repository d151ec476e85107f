package udp

import (
	"errors"
	"fmt"
	"time"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/tun"
)

// buffers returns n buffers of tun.BufSize, allocated once per loop: the
// loops reuse them for every batch (no allocation per packet).
func buffers(n int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, tun.BufSize)
	}
	return bufs
}

// loopErr decides what a failed read means: nil and stop when Run is
// closing, an error to stop with when the device or socket went away,
// else count it, pause briefly and go on.
func (r *Relay) loopErr(err error) (stop bool, _ error) {
	if closedErr(err) {
		if r.stopping.Load() {
			return true, nil
		}
		return true, err
	}
	r.c.recvErrors.Add(1)
	time.Sleep(errorPause)
	return false, nil
}

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
	bufs := buffers(r.dev.BatchSize())
	sizes := make([]int, len(bufs))
	var g grouper
	for {
		n, err := r.dev.Read(bufs, sizes)
		if err != nil {
			if stop, err := r.loopErr(err); stop {
				return err
			}
		}
		if n > 0 {
			r.encapBatch(r.table.Load(), bufs[:n], sizes, &g)
		}
	}
}

// encapBatch groups the packets bufs[i][Offset:Offset+sizes[i]] by peer
// and sends each group in one call.
func (r *Relay) encapBatch(t *Table, bufs [][]byte, sizes []int, g *grouper) {
	g.reset()
	var noRoute uint64
	for i, b := range bufs {
		pkt := b[tun.Offset : tun.Offset+sizes[i]]
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
	r.c.drops[DropNoRoute].Add(noRoute)
	for _, gr := range g.groups[:g.n] {
		bytes := 0
		for _, p := range gr.pkts {
			bytes += len(p)
		}
		err := r.bind.Send(gr.pkts, t.peers[gr.peer].ep)
		var gsoOff conn.ErrUDPGSODisabled
		if errors.As(err, &gsoOff) {
			if !r.c.gsoOff.Swap(true) {
				r.log.Warn("UDP GSO refused by the socket, sending one datagram per message", "err", err)
			}
			err = gsoOff.RetryErr
		}
		if err != nil {
			r.c.drops[DropSend].Add(uint64(len(gr.pkts)))
			continue
		}
		r.c.tx.batch(len(gr.pkts), bytes)
	}
}

// decapLoop receives datagrams and writes the valid packets into the TUN.
func (r *Relay) decapLoop(recv conn.ReceiveFunc) error {
	bufs := buffers(r.bind.BatchSize())
	rbufs := make([][]byte, len(bufs)) // the same memory, past the headroom
	for i, b := range bufs {
		rbufs[i] = b[tun.Offset:]
	}
	sizes := make([]int, len(bufs))
	eps := make([]conn.Endpoint, len(bufs))
	wbufs := make([][]byte, 0, len(bufs))
	for {
		n, err := recv(rbufs, sizes, eps)
		if err != nil {
			if stop, err := r.loopErr(err); stop {
				return err
			}
		}
		if n > 0 {
			wbufs = r.decapBatch(r.table.Load(), bufs[:n], sizes, eps, wbufs)
		}
	}
}

// decapBatch checks every datagram of a batch and writes the valid ones
// into the TUN in one call; wbufs is scratch, returned for reuse.
func (r *Relay) decapBatch(t *Table, bufs [][]byte, sizes []int, eps []conn.Endpoint, wbufs [][]byte) [][]byte {
	wbufs = wbufs[:0]
	mtu, bytes := r.dev.MTU(), 0
	var drops [numReasons]uint64
	for i, b := range bufs {
		if sizes[i] == 0 || eps[i] == nil { // a slot the receive left empty
			continue
		}
		n, reason := t.Check(eps[i].DstIP(), b[tun.Offset:tun.Offset+sizes[i]], mtu)
		if reason != OK {
			drops[reason]++
			continue
		}
		wbufs = append(wbufs, b[:tun.Offset+n])
		bytes += n
	}
	for reason, n := range drops {
		if n > 0 {
			r.c.drops[reason].Add(n)
		}
	}
	if len(wbufs) == 0 {
		return wbufs
	}
	if _, err := r.dev.Write(wbufs); err != nil {
		r.c.drops[DropTUNWrite].Add(uint64(len(wbufs)))
		r.log.Debug("tun write", "err", fmt.Sprint(err))
		return wbufs
	}
	r.c.rx.batch(len(wbufs), bytes)
	return wbufs
}
