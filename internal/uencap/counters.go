package uencap

import (
	"math/bits"
	"sync/atomic"
)

// NumBuckets is the number of batch size buckets: bucket i counts batches
// of 2^i .. 2^(i+1)-1 packets, the last one everything larger.
const NumBuckets = 8

// Direction holds one direction's counters, updated once per batch.
type Direction struct {
	packets, bytes, batches atomic.Uint64
	sizes                   [NumBuckets]atomic.Uint64
}

// Batch counts a batch of packets carrying bytes (nothing when empty).
func (d *Direction) Batch(packets, bytes int) {
	if packets <= 0 {
		return
	}
	d.packets.Add(uint64(packets))
	d.bytes.Add(uint64(bytes))
	d.batches.Add(1)
	d.sizes[min(bits.Len(uint(packets))-1, NumBuckets-1)].Add(1)
}

// Snapshot returns the totals so far.
func (d *Direction) Snapshot() Flow {
	f := Flow{Packets: d.packets.Load(), Bytes: d.bytes.Load(), Batches: d.batches.Load()}
	for i := range f.BatchSizes {
		f.BatchSizes[i] = d.sizes[i].Load()
	}
	return f
}

// Flow is one direction's totals.
type Flow struct {
	Packets, Bytes uint64
	// Batches is the number of reads (TUN for Tx, socket for Rx) that
	// moved packets; Packets/Batches is the mean batch.
	Batches    uint64
	BatchSizes [NumBuckets]uint64
}

// Add returns f plus g.
func (f Flow) Add(g Flow) Flow {
	f.Packets += g.Packets
	f.Bytes += g.Bytes
	f.Batches += g.Batches
	for i := range f.BatchSizes {
		f.BatchSizes[i] += g.BatchSizes[i]
	}
	return f
}

// Counters are an encapsulation's: both directions, drops by reason and
// the receive errors its loops went on after.
type Counters struct {
	// Tx: read from the TUN and sent. Rx: received and written to the TUN.
	Tx, Rx Direction
	drops  [NumReasons]atomic.Uint64
	errors atomic.Uint64
}

// Drop counts n packets dropped for r.
func (c *Counters) Drop(r Reason, n uint64) {
	if n > 0 && r < NumReasons {
		c.drops[r].Add(n)
	}
}

// Dropped is how many packets were dropped for r.
func (c *Counters) Dropped(r Reason) uint64 { return c.drops[r].Load() }

// Totals is a snapshot of Counters.
type Totals struct {
	// Tx: read from the TUN and sent. Rx: received and written to the TUN.
	Tx, Rx Flow
	// Drops by reason label (only reasons that happened).
	Drops map[string]uint64
	// Errors counts failed socket receives and TUN reads.
	Errors uint64
}

// Totals returns the counters so far, drops of the given reasons only.
func (c *Counters) Totals(reasons []Reason) Totals {
	t := Totals{Tx: c.Tx.Snapshot(), Rx: c.Rx.Snapshot(), Drops: map[string]uint64{}, Errors: c.errors.Load()}
	for _, r := range reasons {
		if n := c.drops[r].Load(); n > 0 {
			t.Drops[r.String()] = n
		}
	}
	return t
}

// Add returns t plus u (a fresh Drops map).
func (t Totals) Add(u Totals) Totals {
	out := Totals{Tx: t.Tx.Add(u.Tx), Rx: t.Rx.Add(u.Rx), Drops: map[string]uint64{}, Errors: t.Errors + u.Errors}
	for _, d := range []map[string]uint64{t.Drops, u.Drops} {
		for k, v := range d {
			out.Drops[k] += v
		}
	}
	return out
}
