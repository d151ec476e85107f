// Package udp is weft's userspace UDP backend: pod packets the kernel
// routes into the TUN device weft.udp are sent, bare (no header of weft's
// own: Flannel's UDP wire format), as the payload of UDP datagrams to port
// 8285 on the node that owns the destination pod CIDR; datagrams received
// on that port from known nodes are checked and written back into the TUN.
//
// The data path is the Relay: one goroutine reads the TUN in batches (with
// TSO a single read returns a 64 KiB TCP segment split into MTU-sized
// packets) and sends each destination's packets in one batched call (UDP
// GSO where the kernel has it), one goroutine per receive function of the
// socket receives in batches (recvmmsg, UDP GRO) and writes the valid
// packets into the TUN in one call (GRO-coalesced). The socket is any
// golang.zx2c4.com/wireguard/conn Bind: Socket (IPv4, no allocation per
// packet; the default) or the library's StdNetBind (IPv4 and IPv6). The
// TUN is internal/tun's.
// The routing table (pod CIDR -> node) is immutable and swapped atomically
// by SetPeers, so the loops never take a lock. Every datagram is validated
// before it reaches the TUN (see Reason); drops are counted by reason.
//
// Backend (built by Factory) runs the relay behind internal/backend's
// contract: the device and its pod CIDR address, the relay for the
// backend's lifetime (re-opened by Apply when it stopped), the routes
// through the node's route writer (owner "udp"), the encapsulation guard,
// the Prometheus collector (Metrics) and the offload mode for /readyz.
package udp

import (
	"encoding/json"
	"fmt"

	"github.com/weftnet/weft/internal/backend"
)

// Type is the backend's name in net-conf.json and in weft.dev/backends.
const Type = "udp"

// Defaults.
const (
	DefaultDevice = "weft.udp"
	DefaultPort   = 8285
	// Overhead is what UDP over IPv4 adds to every packet.
	Overhead = 28
)

// Config is the backend section of net-conf.json for type udp.
type Config struct {
	Port int `json:"port"`
	// MTU of the TUN device; 0 = underlay MTU - 28.
	MTU int `json:"mtu"`
}

// DecodeConfig decodes and validates the backend section strictly:
// unknown fields and bad values are errors that name the field.
func DecodeConfig(raw json.RawMessage) (Config, error) {
	var w struct {
		Type string `json:"type"`
		Config
	}
	w.Port = DefaultPort
	if err := backend.DecodeSection(raw, Type, &w, &w.Type); err != nil {
		return Config{}, err
	}
	c := w.Config
	if c.Port < 1 || c.Port > 65535 {
		return Config{}, fmt.Errorf("port %d: must be 1..65535", c.Port)
	}
	if c.MTU != 0 && (c.MTU < 576 || c.MTU > 65535-Overhead) {
		return Config{}, fmt.Errorf("mtu %d: must be 0 (underlay - %d) or 576..%d", c.MTU, Overhead, 65535-Overhead)
	}
	return c, nil
}

// DeviceMTU is the TUN MTU for an underlay MTU: the configured one, else
// the underlay's minus the IPv4 and UDP headers.
func (c Config) DeviceMTU(underlayMTU int) int {
	if c.MTU != 0 {
		return c.MTU
	}
	return underlayMTU - Overhead
}

// Validator implements the config package's stage-two check for udp.
type Validator struct{}

// ValidateConfig decodes raw as a udp backend section.
func (Validator) ValidateConfig(raw json.RawMessage) error {
	_, err := DecodeConfig(raw)
	return err
}
