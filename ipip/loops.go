package ipip

import (
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/internal/tun"
)

// newBuffers returns n buffers of tun.BufSize, allocated once per loop.
func newBuffers(n int) [][]byte {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, tun.BufSize)
	}
	return b
}

// encapLoop reads the TUN in batches and sends every batch in one Send.
func (t *Tunnel) encapLoop() error {
	bufs := newBuffers(t.dev.BatchSize())
	sizes := make([]int, len(bufs))
	pkts := make([][]byte, 0, len(bufs))
	dsts := make([]netip.Addr, 0, len(bufs))
	for {
		n, err := t.dev.Read(bufs, sizes)
		if err != nil {
			if stop, err := t.loopErr(err); stop {
				return err
			}
		}
		if n > 0 {
			pkts, dsts = t.encapBatch(t.table.Load(), bufs[:n], sizes, pkts, dsts)
		}
	}
}

// encapBatch sends the packets bufs[i][Offset:Offset+sizes[i]] to the
// nodes owning their destinations; pkts and dsts are scratch, returned
// for reuse.
func (t *Tunnel) encapBatch(tab *Table, bufs [][]byte, sizes []int, pkts [][]byte, dsts []netip.Addr) ([][]byte, []netip.Addr) {
	pkts, dsts = pkts[:0], dsts[:0]
	bytes := 0
	for i, b := range bufs {
		p := b[tun.Offset : tun.Offset+sizes[i]]
		dst, ok := tab.Next(p)
		if !ok {
			t.drops[DropNoRoute].Add(1)
			continue
		}
		pkts, dsts = append(pkts, p), append(dsts, dst)
		bytes += len(p)
	}
	if len(pkts) == 0 {
		return pkts, dsts
	}
	failed, err := t.conn.Send(pkts, dsts)
	if failed > 0 {
		t.drops[DropSend].Add(uint64(failed))
		t.log.Debug("ipip send", "failed", failed, "err", fmt.Sprint(err))
	}
	// bytes are counted for the whole batch: a refused send is rare and
	// counted as a drop.
	t.tx.add(len(pkts)-failed, bytes)
	return pkts, dsts
}

// decapLoop receives IP-in-IP packets in batches and writes the valid
// inner packets into the TUN in one call.
func (t *Tunnel) decapLoop() error {
	bufs := newBuffers(t.conn.BatchSize())
	sizes := make([]int, len(bufs))
	wbufs := make([][]byte, 0, len(bufs))
	for {
		n, err := t.conn.Recv(bufs, sizes)
		if err != nil {
			if stop, err := t.loopErr(err); stop {
				return err
			}
		}
		if n > 0 {
			wbufs = t.decapBatch(t.table.Load(), bufs[:n], sizes, wbufs)
		}
	}
}

// decapBatch validates every received packet bufs[i][:sizes[i]] and
// writes the inner packets of the valid ones into the TUN; the outer
// header's room becomes the TUN headroom (no copy). wbufs is scratch,
// returned for reuse.
func (t *Tunnel) decapBatch(tab *Table, bufs [][]byte, sizes []int, wbufs [][]byte) [][]byte {
	wbufs = wbufs[:0]
	mtu, bytes := t.dev.MTU(), 0
	var drops [numReasons]uint64
	for i, b := range bufs {
		off, n, r := tab.Decap(b[:sizes[i]], mtu)
		if r != OK {
			drops[r]++
			continue
		}
		// off >= 20 > tun.Offset: the headroom lies inside the outer header.
		wbufs = append(wbufs, b[off-tun.Offset:off+n])
		bytes += n
	}
	for r, n := range drops {
		if n > 0 {
			t.drops[r].Add(n)
		}
	}
	if len(wbufs) == 0 {
		return wbufs
	}
	if _, err := t.dev.Write(wbufs); err != nil {
		t.drops[DropTUNWrite].Add(uint64(len(wbufs)))
		t.log.Debug("tun write", "err", fmt.Sprint(err))
		return wbufs
	}
	t.rx.add(len(wbufs), bytes)
	return wbufs
}
