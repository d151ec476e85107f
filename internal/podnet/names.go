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
