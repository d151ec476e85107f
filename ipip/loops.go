package ipip

import (
	"fmt"
	"net/netip"

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
// writes the inner packets of the valid ones into the TUN; the outer
// header's room becomes the TUN headroom (no copy: the inner packet
// starts at least 20 bytes in, past tun.Offset). wbufs is scratch,
// returned for reuse.
func (t *Tunnel) decapBatch(tab *Table, bufs [][]byte, sizes []int, wbufs [][]byte) [][]byte {
	mtu := t.pump.Dev.MTU()
	return t.pump.Decap(bufs, sizes, 0, wbufs, func(_ int, b []byte) (int, int, uencap.Reason) {
		return tab.Decap(b, mtu)
	})
}
