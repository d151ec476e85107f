package iptables

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// NetlinkSets updates ipsets over netlink, without exec'ing `ipset`: an
// incremental member change costs microseconds instead of a process start.
type NetlinkSets struct {
	h *netlink.Handle
}

// NewNetlinkSets opens a netfilter netlink handle in the namespace at
// netnsPath ("" = the current one).
func NewNetlinkSets(netnsPath string) (*NetlinkSets, error) {
	h, err := netlinkx.OpenAt(netnsPath, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("ipset netlink: %w", err)
	}
	return &NetlinkSets{h: h}, nil
}

// SwapIPSet atomically replaces the members of the existing hash:ip set
// name: a scratch set temp is created (replacing any leftover), filled,
// swapped with name and destroyed.
func (s *NetlinkSets) SwapIPSet(ctx context.Context, name, temp string, members []netip.Addr) error {
	// A scratch set left by an interrupted update may have other options:
	// start from none.
	if err := s.h.IpsetDestroy(temp); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("ipset destroy leftover %s: %w", temp, err)
	}
	opts := netlink.IpsetCreateOptions{Family: unix.AF_INET, MaxElements: 1 << 20}
	if err := s.h.IpsetCreate(temp, "hash:ip", opts); err != nil {
		return fmt.Errorf("ipset create %s: %w", temp, err)
	}
	for _, m := range members {
		if err := ctx.Err(); err != nil {
			_ = s.h.IpsetDestroy(temp)
			return err
		}
		if !m.Is4() {
			continue
		}
		e := &netlink.IPSetEntry{IP: net.IP(m.AsSlice()), Replace: true}
		if err := s.h.IpsetAdd(temp, e); err != nil {
			_ = s.h.IpsetDestroy(temp)
			return fmt.Errorf("ipset add %s %s: %w", temp, m, err)
		}
	}
	if err := s.h.IpsetSwap(temp, name); err != nil {
		_ = s.h.IpsetDestroy(temp)
		return fmt.Errorf("ipset swap %s %s: %w", temp, name, err)
	}
	if err := s.h.IpsetDestroy(temp); err != nil {
		return fmt.Errorf("ipset destroy %s: %w", temp, err)
	}
	return nil
}

// Close releases the netlink handle.
func (s *NetlinkSets) Close() error {
	s.h.Close()
	return nil
}
