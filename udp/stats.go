package udp

import "github.com/weftnet/weft/internal/uencap"

// Reason is why a packet was dropped (OK: it was not).
type Reason = uencap.Reason

// The relay's drop reasons (documented in uencap). The Rx ones are
// checked on every datagram before its packet reaches the TUN; the Tx
// ones apply to packets read from the TUN.
const (
	OK                     = uencap.OK
	DropUnknownSender      = uencap.DropUnknownSender
	DropTruncated          = uencap.DropTruncated
	DropNotIP              = uencap.DropNotIP
	DropSpoofedSource      = uencap.DropSpoofedSource
	DropForeignDestination = uencap.DropForeignDestination
	DropOversize           = uencap.DropOversize
	DropTUNWrite           = uencap.DropTUNWrite
	DropNoRoute            = uencap.DropNoRoute
	DropSend               = uencap.DropSend
)

var reasons = []Reason{DropUnknownSender, DropTruncated, DropNotIP, DropSpoofedSource,
	DropForeignDestination, DropOversize, DropTUNWrite, DropNoRoute, DropSend}

// Reasons lists every drop reason of the relay.
func Reasons() []Reason { return append([]Reason(nil), reasons...) }

// NumBuckets is the number of batch size buckets: bucket i counts batches
// of 2^i .. 2^(i+1)-1 packets, the last one everything larger.
const NumBuckets = uencap.NumBuckets

// Flow is one direction's totals.
type Flow = uencap.Flow

// Stats is a snapshot of the relay's counters.
type Stats struct {
	// Tx: read from the TUN, sent to peers. Rx: received, written to TUN.
	// Drops by reason (only reasons that happened). Errors counts failed
	// socket receives and TUN reads.
	uencap.Totals
	// TUNMode is the TUN's offload mode (tun.Mode.String).
	TUNMode string
	// SocketMode is the socket's offloads ("gso+gro", "gro", "none"), ""
	// when the socket does not say (StdNetBind).
	SocketMode string
	// UDPGSOOff: the socket refused a segmented send and fell back to one
	// datagram per message.
	UDPGSOOff bool
}
