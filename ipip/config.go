// Package ipip is weft's IP-in-IP (RFC 2003) encapsulation for the bgp
// backend's ipipMode Always and CrossSubnet: a pod packet to another
// node's pod CIDR travels as the payload of an outer IPv4 packet with
// protocol 4, from this node's underlay address to the owning node's.
//
// Two implementations exist in principle, and Detect says which one this
// kernel allows: the kernel's ipip link (weft.ipip of type ipip) where the
// ipip module is present, and otherwise the userspace Tunnel, which is the
// one implemented here: the kernel routes pod packets into the TUN device
// weft.ipip (internal/tun, offloads and batches), the Tunnel sends them
// through a raw IPPROTO_IPIP socket bound to the underlay address (the
// kernel adds the outer header; sendmmsg, one call per TUN batch) and
// receives the other way (recvmmsg), strips the outer header, validates
// every packet (known sender, well-formed inner IPv4, inner source inside
// the sender's pod CIDRs, inner destination inside this node's, size) and
// writes the valid ones into the TUN in one batch. A TCP segment that the
// kernel's built-in IP-in-IP GRO merged on the way (a receiving NIC with
// GRO does) is larger than the MTU: it goes into the TUN as one GSO write,
// or cut into segments where the TUN takes none (super.go). The peer table is
// immutable and swapped atomically by SetPeers; drops are counted by
// Reason. Userspace IPIP refuses to start where the kernel module is
// present: the kernel would decapsulate (or reject) every packet too.
package ipip

// Defaults.
const (
	// DefaultDevice is the TUN (userspace) or ipip link (kernel).
	DefaultDevice = "weft.ipip"
	// Overhead is the outer IPv4 header: MTU = underlay MTU - Overhead.
	Overhead = 20
	// Protocol is IP-in-IP's IP protocol number.
	Protocol = 4
)

// DeviceMTU is the device MTU for an underlay MTU.
func DeviceMTU(underlayMTU int) int { return underlayMTU - Overhead }
