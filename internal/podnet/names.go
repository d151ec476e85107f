package podnet

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"net"
)

// HostVethPrefix starts the name of every host-side veth weft creates.
const HostVethPrefix = "wv"

// HostVethName is the host end's name for an attachment: the prefix and
// 13 hex digits of sha256(containerID, ifname). DEL and GC find the link by
// it without the pod's netns.
func HostVethName(containerID, ifName string) string {
	h := sha256.New()
	h.Write([]byte(containerID))
	h.Write([]byte{0})
	h.Write([]byte(ifName))
	return HostVethPrefix + hex.EncodeToString(h.Sum(nil))[:13]
}

// randomMAC returns a random unicast, locally administered MAC address.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = (m[0] &^ 0x01) | 0x02
	return m
}

// NetworkGroup is the device group (IFLA_GROUP) weft gives the host veths
// of network name: 32 bits of sha256(name), never 0 (the kernel's default
// group, which veths created before weft set groups carry). The group is
// set in the same request that creates the veth, so even a veth left by a
// killed ADD says which network it belongs to, and GC of one network never
// collects another network's veths on a shared bridge.
func NetworkGroup(name string) uint32 {
	h := sha256.Sum256([]byte("weft-network\x00" + name))
	g := uint32(h[0])<<24 | uint32(h[1])<<16 | uint32(h[2])<<8 | uint32(h[3])
	if g == 0 {
		g = 1
	}
	return g
}
