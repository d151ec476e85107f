// Package uencap is what Weft's userspace encapsulations share: the udp
// backend's relay (udp/) and the userspace IP-in-IP tunnel (ipip/) both
// move packets between a TUN device and an underlay socket in batches,
// check every received packet and count what they drop by reason. Here
// are the drop reasons and counters (Counters), the two loops and their
// lifetime (Pump: TUN reads handed to the caller in batches, socket
// receives checked and written into the TUN in one call) and, on Linux,
// the reused recvmmsg/sendmmsg message headers of their sockets
// (MsgBatch). What is the encapsulation's own (the wire format, its
// peer table, its socket options) stays in its package.
package uencap

import "net/netip"

// Peer is a remote node as an encapsulation needs it: its name, its
// underlay address and the pod CIDRs it may speak for.
type Peer struct {
	Name       string
	UnderlayIP netip.Addr
	PodCIDRs   []netip.Prefix
}

// Reason is why a packet was dropped (OK: it was not). Each encapsulation
// counts the subset that applies to it (its Reasons list); the label
// (String) is the metric's.
type Reason uint8

// Drop reasons. The receive ones are checked on every packet that comes
// off the underlay before its inner packet reaches the TUN; the send
// ones apply to packets read from the TUN.
const (
	OK Reason = iota
	// DropMalformed: the outer header is not the encapsulation's (IP-in-IP:
	// no IPv4 header with protocol 4).
	DropMalformed
	// DropUnknownSender: the outer source is no known node's underlay
	// address.
	DropUnknownSender
	// DropTruncated: the inner packet is shorter than an IP header or
	// than its header says.
	DropTruncated
	// DropNotIP: the inner packet is not an IPv4/IPv6 packet (version,
	// header length).
	DropNotIP
	// DropNotIPv4: the inner packet is no well-formed IPv4 packet
	// (version, header length, header checksum) where only IPv4 is
	// carried.
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
	// DropNoRoute: a packet read from the TUN whose destination no known
	// node owns, or that the encapsulation cannot carry (not IPv4/IPv6, or
	// not IPv4 for IP-in-IP).
	DropNoRoute
	// DropSend: the socket refused the packet.
	DropSend
	// NumReasons bounds the reasons (for arrays indexed by Reason).
	NumReasons
)

var reasonNames = [NumReasons]string{"", "malformed", "unknown-sender", "truncated", "not-ip", "not-ipv4",
	"oversize", "spoofed-source", "foreign-destination", "tun-write", "no-route", "send"}

// String is the reason's metric label.
func (r Reason) String() string {
	if r < NumReasons {
		return reasonNames[r]
	}
	return "unknown"
}
