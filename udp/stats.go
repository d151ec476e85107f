package udp

import (
	"math/bits"
	"sync/atomic"
)

// Reason is why a packet was dropped (OK: it was not).
type Reason uint8

// Drop reasons. The Rx ones are checked on every datagram before its
// packet reaches the TUN; the Tx ones apply to packets read from the TUN.
const (
	OK Reason = iota
	// DropUnknownSender: the datagram's source is no known node's
	// underlay address.
	DropUnknownSender
	// DropTruncated: shorter than an IP header or than its header says.
	DropTruncated
	// DropNotIP: not an IPv4/IPv6 packet (version, header length).
	DropNotIP
	// DropSpoofedSource: the inner source is outside the sending node's
	// pod CIDRs.
	DropSpoofedSource
	// DropForeignDestination: the inner destination is outside this
	// node's pod CIDRs.
	DropForeignDestination
	// DropOversize: the inner packet is larger than the TUN MTU.
	DropOversize
	// DropTUNWrite: the TUN refused the write.
	DropTUNWrite
	// DropNoRoute: a packet read from the TUN whose destination no known
	// node owns (or that is not IPv4/IPv6).
	DropNoRoute
	// DropSend: the socket refused the datagrams.
	DropSend
	numReasons
)

var reasonNames = [numReasons]string{"", "unknown-sender", "truncated", "not-ip", "spoofed-source",
	"foreign-destination", "oversize", "tun-write", "no-route", "send"}

// String is the reason's metric label.
func (r Reason) String() string {
	if r < numReasons {
		return reasonNames[r]
	}
	return "unknown"
}

// Reasons lists every drop reason.
func Reasons() []Reason {
	out := make([]Reason, 0, numReasons-1)
	for r := OK + 1; r < numReasons; r++ {
		out = append(out, r)
	}
	return out
}

// NumBuckets is the number of batch size buckets: bucket i counts batches
// of 2^i .. 2^(i+1)-1 packets, the last one everything larger.
const NumBuckets = 8

// direction holds one direction's counters.
type direction struct {
	packets, bytes, batches atomic.Uint64
	sizes                   [NumBuckets]atomic.Uint64
}

func (d *direction) batch(packets, bytes int) {
	if packets == 0 {
		return
	}
	d.packets.Add(uint64(packets))
	d.bytes.Add(uint64(bytes))
	d.batches.Add(1)
	d.sizes[min(bits.Len(uint(packets))-1, NumBuckets-1)].Add(1)
}

func (d *direction) snapshot() Flow {
	f := Flow{Packets: d.packets.Load(), Bytes: d.bytes.Load(), Batches: d.batches.Load()}
	for i := range f.BatchSizes {
		f.BatchSizes[i] = d.sizes[i].Load()
	}
	return f
}

// counters are the relay's, updated once per batch.
type counters struct {
	tx, rx     direction
	drops      [numReasons]atomic.Uint64
	gsoOff     atomic.Bool
	recvErrors atomic.Uint64
}

// Flow is one direction's totals.
type Flow struct {
	Packets, Bytes uint64
	// Batches is the number of reads (TUN for Tx, socket for Rx) that
	// returned packets; Packets/Batches is the mean batch.
	Batches    uint64
	BatchSizes [NumBuckets]uint64
}

// Stats is a snapshot of the relay's counters.
type Stats struct {
	// Tx: read from the TUN, sent to peers. Rx: received, written to TUN.
	Tx, Rx Flow
	// Drops by reason (only reasons that happened).
	Drops map[string]uint64
	// TUNMode is the TUN's offload mode (tun.Mode.String).
	TUNMode string
	// SocketMode is the socket's offloads ("gso+gro", "gro", "none"), ""
	// when the socket does not say (StdNetBind).
	SocketMode string
	// UDPGSOOff: the socket refused a segmented send and fell back to one
	// datagram per message.
	UDPGSOOff bool
	// Errors counts failed socket receives and TUN reads.
	Errors uint64
}
