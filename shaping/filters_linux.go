package shaping

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// Address filters. Each tree classifies by the pod's addresses: its first
// IPv4 and its first IPv6 address, the source on the egress tree and the
// destination on the ingress tree. A u32 instance (one priority) holds one
// protocol, so IPv4 filters sit at FilterPrio and IPv6 at FilterPrio6, and
// a filter's node id is its class's minor. The kernel numbers each
// instance's hash table itself (800: for the first u32 on the device,
// 801: ... for the next), so a filter is added with its node id only and
// the table is read back and remembered for later deletes.

// family is an address family of the filters.
type family int

const (
	fam4 family = iota
	fam6
)

var (
	famProto = [2]uint16{fam4: unix.ETH_P_IP, fam6: unix.ETH_P_IPV6}
	famPrio  = [2]uint16{fam4: FilterPrio, fam6: FilterPrio6}
	// Offsets of the source address in each header; the destination
	// follows it.
	famSrcOff = [2]int32{fam4: 12, fam6: 8}
)

const (
	htidMask = 0xfff00000
	nodeMask = 0xfff
)

// addrTables are one tree's u32 hash tables per family (0: unknown).
type addrTables [2]uint32

func familyOf(a netip.Addr) family {
	if a.Is4() || a.Is4In6() {
		return fam4
	}
	return fam6
}

// addrFilters are the class's u32 filters (one per family it has an
// address of), each with only its node id as handle.
func addrFilters(link int, dir Direction, cl Class) []*netlink.U32 {
	var out []*netlink.U32
	var seen [2]bool
	for _, a := range cl.Addrs {
		fam := familyOf(a)
		if seen[fam] {
			continue
		}
		seen[fam] = true
		off := famSrcOff[fam]
		b := a.Unmap().AsSlice()
		if dir == Ingress {
			off += int32(len(b))
		}
		var keys []netlink.TcU32Key
		for i := 0; i < len(b); i += 4 {
			keys = append(keys, netlink.TcU32Key{Mask: 0xffffffff, Val: binary.BigEndian.Uint32(b[i:]), Off: off + int32(i)})
		}
		out = append(out, &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: link, Parent: netlink.MakeHandle(rootMajor, 0),
				Handle: uint32(cl.Minor), Priority: famPrio[fam], Protocol: famProto[fam]},
			ClassId: netlink.MakeHandle(rootMajor, cl.Minor),
			Sel:     &netlink.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: keys},
		})
	}
	slices.SortFunc(out, func(a, b *netlink.U32) int { return int(a.Priority) - int(b.Priority) })
	return out
}

// filterFamily tells which of Weft's address filters u is.
func filterFamily(u *netlink.U32) (family, bool) {
	for _, f := range []family{fam4, fam6} {
		if u.Priority == famPrio[f] && u.Protocol == famProto[f] {
			return f, true
		}
	}
	return 0, false
}

func sameAddrFilter(a, b *netlink.U32) bool {
	if a.ClassId != b.ClassId || a.Sel == nil || b.Sel == nil || a.Protocol != b.Protocol || a.Priority != b.Priority ||
		a.Handle&nodeMask != b.Handle&nodeMask || len(a.Sel.Keys) != len(b.Sel.Keys) {
		return false
	}
	for i, k := range a.Sel.Keys {
		w := b.Sel.Keys[i]
		if k.Mask != w.Mask || k.Val != w.Val || k.Off != w.Off {
			return false
		}
	}
	return true
}

type filterKey struct {
	fam  family
	node uint32
}

// addrFilters keeps the tree's address filters: it reads them back with
// their hash tables, deletes what differs and adds what is missing.
func (c *converge) addrFilters(l netlink.Link, t Tree) error {
	fs, err := c.h.FilterList(l, netlink.MakeHandle(rootMajor, 0))
	if err != nil {
		return fmt.Errorf("list filters of %s: %w", l.Attrs().Name, err)
	}
	*c.hts = addrTables{}
	want := map[filterKey]*netlink.U32{}
	for _, cl := range t.Classes {
		for _, f := range addrFilters(l.Attrs().Index, t.Dir, cl) {
			fam, _ := filterFamily(f)
			want[filterKey{fam, f.Handle}] = f
		}
	}
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok {
			continue
		}
		fam, ours := filterFamily(u)
		if !ours {
			continue
		}
		if u.Handle&nodeMask == 0 {
			c.hts[fam] = u.Handle & htidMask // the hash table itself
			continue
		}
		key := filterKey{fam, u.Handle & nodeMask}
		if w := want[key]; w != nil && sameAddrFilter(u, w) && (c.hts[fam] == 0 || u.Handle&htidMask == c.hts[fam]) {
			delete(want, key)
			continue
		}
		if err := netlinkx.Do(func() error { return c.h.FilterDel(u) }); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete filter %x: %w", u.Handle, err)
		}
		c.n++
	}
	keys := slices.SortedFunc(mapsKeys(want), func(a, b filterKey) int {
		return int(a.fam)*0x1000 + int(a.node) - int(b.fam)*0x1000 - int(b.node)
	})
	for _, key := range keys {
		if err := addAddrFilter(c.h, l.Attrs().Index, c.hts, want[key]); err != nil {
			return err
		}
		c.n++
	}
	return nil
}

// addAddrFilter adds f in its family's table; when that table is not
// known yet (the first filter of the family creates it) it reads it back.
func addAddrFilter(h *netlink.Handle, link int, hts *addrTables, f *netlink.U32) error {
	fam, _ := filterFamily(f)
	add := *f
	add.Handle = hts[fam] | f.Handle&nodeMask
	if err := netlinkx.Do(func() error { return h.FilterAdd(&add) }); err != nil {
		return fmt.Errorf("filter for class 1:%x: %w", f.Handle&nodeMask, err)
	}
	if hts[fam] != 0 {
		return nil
	}
	fs, err := h.FilterList(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Index: link}}, netlink.MakeHandle(rootMajor, 0))
	if err != nil {
		return fmt.Errorf("list filters: %w", err)
	}
	for _, g := range fs {
		if u, ok := g.(*netlink.U32); ok && u.Handle&nodeMask == f.Handle&nodeMask {
			if ufam, ours := filterFamily(u); ours && ufam == fam {
				hts[fam] = u.Handle & htidMask
				return nil
			}
		}
	}
	return fmt.Errorf("filter for class 1:%x: not found after adding it", f.Handle&nodeMask)
}

// delAddrFilters deletes the class's filters (a missing one is fine).
func delAddrFilters(h *netlink.Handle, link int, dir Direction, hts *addrTables, cl Class) error {
	for _, f := range addrFilters(link, dir, cl) {
		fam, _ := filterFamily(f)
		if hts[fam] == 0 {
			return fmt.Errorf("delete filter of class 1:%x: its %s hash table is not known", cl.Minor, map[family]string{fam4: "IPv4", fam6: "IPv6"}[fam])
		}
		f.Handle |= hts[fam]
		err := netlinkx.Do(func() error { return h.FilterDel(f) })
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("delete filter of class 1:%x: %w", cl.Minor, err)
		}
	}
	return nil
}
