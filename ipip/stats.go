package ipip

import "sync/atomic"

// Reason is why a packet was dropped (OK: it was not).
type Reason uint8

// Drop reasons. The receive ones are checked on every IP-in-IP packet
// before its inner packet reaches the TUN; the send ones apply to packets
// read from the TUN.
const (
	OK Reason = iota
	// DropMalformed: the outer header is no IPv4 header with protocol 4.
	DropMalformed
	// DropUnknownSender: the outer source is no known node's underlay
	// address.
	DropUnknownSender
	// DropTruncated: the inner packet is shorter than its header says.
	DropTruncated
	// DropNotIPv4: the inner packet is no well-formed IPv4 packet
	// (version, header length, header checksum).
	DropNotIPv4
	// DropOversize: the inner packet is larger than the TUN MTU.
	DropOversize
	// DropSpoofedSource: the inner source is outside the sending node's
	// pod CIDRs.
	DropSpoofedSource
	// DropForeignDestination: the inner destination is outside this
	// node's pod CIDRs.
	DropForeignDestination
	// DropTUNWrite: the TUN refused the write.
	DropTUNWrite
	// DropNoRoute: a packet read from the TUN that is not IPv4 or whose
	// destination no known node owns.
	DropNoRoute
	// DropSend: the socket refused the packet.
	DropSend
	numReasons
)

var reasonNames = [numReasons]string{"", "malformed", "unknown-sender", "truncated", "not-ipv4", "oversize",
	"spoofed-source", "foreign-destination", "tun-write", "no-route", "send"}

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

// flow counts one direction, once per batch.
type flow struct{ packets, bytes, batches atomic.Uint64 }

func (f *flow) add(packets, bytes int) {
	if packets > 0 {
		f.packets.Add(uint64(packets))
		f.bytes.Add(uint64(bytes))
		f.batches.Add(1)
	}
}

func (f *flow) load() Flow {
	return Flow{Packets: f.packets.Load(), Bytes: f.bytes.Load(), Batches: f.batches.Load()}
}

// Flow is one direction's totals.
type Flow struct {
	Packets, Bytes uint64
	// Batches is the number of TUN reads (Tx) or socket receives (Rx)
	// that moved packets: Packets/Batches is the mean batch.
	Batches uint64
}

// Stats is a snapshot of a tunnel's counters.
type Stats struct {
	// Mode is the implementation in use (Userspace).
	Mode Mode
	// Tx: read from the TUN and sent. Rx: received and written to the TUN.
	Tx, Rx Flow
	// Drops by reason label (only reasons that happened).
	Drops map[string]uint64
	// TUNMode is the TUN's offload mode (tun.Mode.String).
	TUNMode string
	// Errors counts failed socket receives and TUN reads.
	Errors uint64
	// Peers is the number of usable peers in the table.
	Peers int
}
