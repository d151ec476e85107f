package tun

import (
	"fmt"
	"net"
	"net/netip"
)

func fmtSscanf(s string, a, b *int) (int, error) { return fmt.Sscanf(s, "%d.%d", a, b) }

func prefixNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}
