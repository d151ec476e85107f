package agent

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// NetlinkHost finds links in the current network namespace.
type NetlinkHost struct{}

// UnderlayLink returns the link holding ip and its MTU.
func (NetlinkHost) UnderlayLink(ip netip.Addr) (string, int, error) {
	h := netlinkx.Current()
	addrs, err := h.AddrList(nil, unix.AF_INET)
	if err != nil {
		return "", 0, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if got, ok := netip.AddrFromSlice(a.IP); ok && got.Unmap() == ip {
			l, err := h.LinkByIndex(a.LinkIndex)
			if err != nil {
				return "", 0, fmt.Errorf("link %d: %w", a.LinkIndex, err)
			}
			return l.Attrs().Name, l.Attrs().MTU, nil
		}
	}
	return "", 0, fmt.Errorf("no link holds %s", ip)
}
