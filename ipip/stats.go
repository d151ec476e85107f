package ipip

import "github.com/weftnet/weft/internal/uencap"

// Reason is why a packet was dropped (OK: it was not).
type Reason = uencap.Reason

// The tunnel's drop reasons (documented in uencap). The receive ones are
// checked on every IP-in-IP packet before its inner packet reaches the
// TUN; the send ones apply to packets read from the TUN.
const (
	OK                     = uencap.OK
	DropMalformed          = uencap.DropMalformed
	DropUnknownSender      = uencap.DropUnknownSender
	DropTruncated          = uencap.DropTruncated
	DropNotIPv4            = uencap.DropNotIPv4
	DropOversize           = uencap.DropOversize
	DropSpoofedSource      = uencap.DropSpoofedSource
	DropForeignDestination = uencap.DropForeignDestination
	DropTUNWrite           = uencap.DropTUNWrite
	DropNoRoute            = uencap.DropNoRoute
	DropSend               = uencap.DropSend
)

var reasons = []Reason{DropMalformed, DropUnknownSender, DropTruncated, DropNotIPv4, DropOversize,
	DropSpoofedSource, DropForeignDestination, DropTUNWrite, DropNoRoute, DropSend}

// Reasons lists every drop reason of the tunnel.
func Reasons() []Reason { return append([]Reason(nil), reasons...) }

// Flow is one direction's totals.
type Flow = uencap.Flow

// Stats is a snapshot of a tunnel's counters.
type Stats struct {
	// Mode is the implementation in use (Userspace).
	Mode Mode
	// Tx: read from the TUN and sent. Rx: received and written to the TUN.
	// Drops by reason label (only reasons that happened). Errors counts
	// failed socket receives and TUN reads.
	uencap.Totals
	// TUNMode is the TUN's offload mode (tun.Mode.String).
	TUNMode string
	// Peers is the number of usable peers in the table.
	Peers int
	// Merged counts received TCP segments larger than the MTU (merged by
	// GRO on the way), written as GSO or cut into segments.
	Merged uint64
}
