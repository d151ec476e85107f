// Package tun owns weft's TUN devices: it creates a persistent TUN device by
// name or adopts the one a previous weftd left (so a restarted weftd
// re-attaches and the routes through it stay), with the offloads the kernel
// offers (IFF_VNET_HDR with TSO4/TSO6, and USO where the kernel has it), and
// wraps it in Device: batched reads and writes of plain IP packets. The
// offload work (splitting a 64 KiB TSO read into MTU-sized packets,
// coalescing writes into GRO segments) is golang.zx2c4.com/wireguard/tun's.
//
// A write that fails with EINVAL while writes are coalesced (some kernels
// reject GRO writes to TUN: tailscale#13041) switches the device to plain
// per-packet writes for the rest of its life; reads keep their offloads.
// Mode reports what is in use. Fake is an in-memory Device for rootless
// tests. The udp backend and userspace IPIP share this package.
package tun

import "fmt"

// Offset is the headroom in front of every packet handed to Read and Write:
// bufs[i][Offset:] holds the packet, bufs[i][:Offset] is scratch the device
// may overwrite (the virtio-net header goes there).
const Offset = 16

// MaxPacket is the largest packet a read can return (and the buffer size,
// after Offset, that callers should give every element of bufs so that GRO
// can coalesce writes into it).
const MaxPacket = 65535

// BufSize is the size of one buffer for Read and Write.
const BufSize = Offset + MaxPacket

// Device is a TUN device carrying plain IPv4/IPv6 packets, in batches.
type Device interface {
	// Read reads one or more packets. Every bufs[i] must be BufSize long;
	// packet i lands at bufs[i][Offset:Offset+sizes[i]]. It returns the
	// number of packets; len(bufs) and len(sizes) must be >= BatchSize().
	Read(bufs [][]byte, sizes []int) (int, error)
	// Write writes the packets bufs[i][Offset:]. The device may use the
	// headroom and the spare capacity of each element (GRO coalescing).
	// It returns the number of packets handed to the kernel.
	Write(bufs [][]byte) (int, error)
	// BatchSize is how many packets one Read can return at most.
	BatchSize() int
	MTU() int
	Name() string
	// Mode reports the offloads in use right now.
	Mode() Mode
	// Close detaches from the device. The device itself stays (it is
	// persistent) until Remove.
	Close() error
}

// GSOWriter is a Device that can take a TCP/IPv4 segment larger than its
// MTU and have the kernel cut it (a GSO write behind a virtio-net header).
type GSOWriter interface {
	// WriteGSO writes the TCP/IPv4 packet b[Offset:] as segments of mss
	// payload bytes; header is the virtio-net header to put in front of
	// it (the caller fills it: gso type, sizes, checksum offsets). ok is
	// false, and nothing is written, when the device exchanges no
	// virtio-net headers right now.
	WriteGSO(b []byte, header func(h []byte)) (ok bool, err error)
}

// VirtioNetHdrLen is the size of struct virtio_net_hdr (kernel ABI), the
// header a GSOWriter's header function fills.
const VirtioNetHdrLen = 10

// Mode is the offload state of a device.
type Mode struct {
	// VnetHdr: the device exchanges virtio-net headers (offloads possible).
	VnetHdr bool
	// TSO: reads may return TCP segments up to 64 KiB (split by the device).
	TSO bool
	// USO: the same for UDP (kernel 6.2+).
	USO bool
	// GROWrite: writes are coalesced into large segments.
	GROWrite bool
	// Fallback says why an offload was turned off at run time ("" if none).
	Fallback string
}

// String names the mode for logs, readiness details and metric labels:
// the offloads joined by "+", e.g. "tso+uso+gro", or "none".
func (m Mode) String() string {
	s := ""
	add := func(on bool, n string) {
		if !on {
			return
		}
		if s != "" {
			s += "+"
		}
		s += n
	}
	add(m.TSO, "tso")
	add(m.USO, "uso")
	add(m.GROWrite, "gro")
	if s == "" {
		s = "none"
	}
	if m.Fallback != "" {
		s = fmt.Sprintf("%s (fallback: %s)", s, m.Fallback)
	}
	return s
}
