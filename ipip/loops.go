package ipip

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/internal/uencap"
)

// encapLoop reads the TUN in batches and sends every batch in one Send.
func (t *Tunnel) encapLoop() error {
	pkts := make([][]byte, 0, t.pump.Dev.BatchSize())
	dsts := make([]netip.Addr, 0, cap(pkts))
	return t.pump.ReadTUN(func(in [][]byte) { pkts, dsts = t.encapBatch(t.table.Load(), in, pkts, dsts) })
}

// encapBatch sends the packets in to the nodes owning their
// destinations; pkts and dsts are scratch, returned for reuse.
func (t *Tunnel) encapBatch(tab *Table, in [][]byte, pkts [][]byte, dsts []netip.Addr) ([][]byte, []netip.Addr) {
	pkts, dsts = pkts[:0], dsts[:0]
	bytes := 0
	for _, p := range in {
		dst, ok := tab.Next(p)
		if !ok {
			t.pump.Drop(DropNoRoute, 1)
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
		t.pump.Drop(DropSend, uint64(failed))
		t.pump.Logger().Debug("ipip send", "failed", failed, "err", fmt.Sprint(err))
	}
	// bytes are counted for the whole batch: a refused send is rare and
	// counted as a drop.
	t.pump.Tx.Batch(len(pkts)-failed, bytes)
	return pkts, dsts
}

// decapLoop receives IP-in-IP packets in batches and writes the valid
// inner packets into the TUN in one call.
func (t *Tunnel) decapLoop() error {
	return t.pump.RecvLoop(t.conn.BatchSize(), 0, t.conn.Recv, func(bufs [][]byte, sizes []int, wbufs [][]byte) [][]byte {
		return t.decapBatch(t.table.Load(), bufs, sizes, wbufs)
	})
}

// decapBatch validates every received packet bufs[i][:sizes[i]] and
// writes the inner packets of the valid ones into the TUN in order: in
// one batch write, except that a merged TCP segment larger than the MTU
// (see super.go) goes on its own, after the packets before it. The outer
// header's room becomes the TUN headroom (no copy: the inner packet starts
// at least 20 bytes in, past tun.Offset). wbufs is scratch, returned for
// reuse.
func (t *Tunnel) decapBatch(tab *Table, bufs [][]byte, sizes []int, wbufs [][]byte) [][]byte {
	p := &t.pump
	mtu := p.Dev.MTU()
	wbufs = wbufs[:0]
	bytes := 0
	var drops [uencap.NumReasons]uint64
	for i, b := range bufs {
		off, n, r := tab.Decap(b[:sizes[i]], mtu)
		if r != OK {
			drops[r]++
			continue
		}
		in := b[off : off+n]
		if n <= t.segMTU || !tcpSuper(in, int(in[0]&0x0f)*4) {
			completeMerged(in)
			wbufs = append(wbufs, b[off-tun.Offset:off+n])
			bytes += n
			continue
		}
		t.writeBatch(wbufs, bytes)
		wbufs, bytes = wbufs[:0], 0
		if r := t.writeMerged(b[off-tun.Offset : off+n]); r != OK {
			drops[r]++
		}
	}
	for r, n := range drops {
		p.Drop(Reason(r), n)
	}
	t.writeBatch(wbufs, bytes)
	return wbufs
}

// writeBatch writes inner packets into the TUN in one call and counts them.
func (t *Tunnel) writeBatch(wbufs [][]byte, bytes int) {
	if len(wbufs) == 0 {
		return
	}
	p := &t.pump
	if _, err := p.Dev.Write(wbufs); err != nil {
		p.Drop(DropTUNWrite, uint64(len(wbufs)))
		p.Logger().Debug("tun write", "err", fmt.Sprint(err))
		return
	}
	p.Rx.Batch(len(wbufs), bytes)
}

// writeMerged writes the merged TCP segment b[tun.Offset:] (larger than
// SegmentMTU) into the TUN: as one GSO write where the device takes one
// and the checksum field holds the pseudo-header sum GRO leaves, else
// (or once the kernel refused a GSO write) cut into segments of
// SegmentMTU, every checksum recomputed.
func (t *Tunnel) writeMerged(b []byte) Reason {
	in := b[tun.Offset:]
	hl := int(in[0]&0x0f) * 4
	mss := segmentSize(in, t.segMTU)
	if mss <= 0 {
		return DropOversize
	}
	g, ok := t.pump.Dev.(tun.GSOWriter)
	if ok && !t.gsoRefused.Load() && binary.BigEndian.Uint16(in[hl+16:]) == pseudoSum(in, hl) {
		done, err := g.WriteGSO(b, func(h []byte) { gsoHeader(h, in, mss) })
		if done && err == nil {
			t.merged.Add(1)
			t.pump.Rx.Batch(1, len(in))
			return OK
		}
		if err != nil { // a kernel that takes no GSO writes: cut from now on
			t.gsoRefused.Store(true)
			t.pump.Logger().Warn("tun refused a GSO write; merged segments are cut in userspace from now on", "err", fmt.Sprint(err))
		}
	}
	t.segs = cutTCP(in, mss, &t.pool, t.segs)
	if _, err := t.pump.Dev.Write(t.segs); err != nil {
		t.pump.Logger().Debug("tun write", "err", fmt.Sprint(err))
		return DropTUNWrite
	}
	bytes := 0
	for _, s := range t.segs {
		bytes += len(s) - tun.Offset
	}
	t.merged.Add(1)
	t.pump.Rx.Batch(len(t.segs), bytes)
	return OK
}
