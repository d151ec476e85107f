// Package allocator is the pure address-allocation logic of weft-ipam:
// ranges, range sets, reservation rules and next-free search. It does no
// I/O; the caller supplies which addresses are in use.
//
// A Range is one contiguous span [Start, End] inside a Subnet, with a
// Gateway. A RangeSet is an ordered list of ranges of one address family
// from which a single address is allocated (host-local's "ranges" is a list
// of range sets, one address per set). The network address, the IPv4
// broadcast address and every gateway of a set are never handed out.
package allocator

import (
	"errors"
	"fmt"
	"net/netip"
)

// Sentinel errors returned by RangeSet methods.
var (
	// ErrExhausted means no address of the set is free.
	ErrExhausted = errors.New("no free address in range set")
	// ErrInUse means a requested address is already allocated.
	ErrInUse = errors.New("address already allocated")
	// ErrOutOfRange means a requested address lies outside every range.
	ErrOutOfRange = errors.New("address not inside any range of the set")
	// ErrReservedAddr means a requested address is a network, broadcast or
	// gateway address.
	ErrReservedAddr = errors.New("address is reserved (network, broadcast or gateway)")
)

// FieldError reports an invalid range field, named as in host-local's
// configuration ("subnet", "rangeStart", "rangeEnd", "gateway").
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, format string, a ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, a...)}
}

// Range is a validated, canonical allocation range.
type Range struct {
	Subnet  netip.Prefix // masked
	Start   netip.Addr   // first allocatable address
	End     netip.Addr   // last allocatable address
	Gateway netip.Addr   // never allocated
}

// NewRange validates and canonicalises a range the way host-local does:
// host bits of subnet are cleared; Start defaults to the first host address,
// End to the last host address (the one before broadcast for IPv4), Gateway
// to the first host address. Zero values mean "default".
func NewRange(subnet netip.Prefix, start, end, gateway netip.Addr) (Range, error) {
	if !subnet.IsValid() {
		return Range{}, fieldErr("subnet", "missing or invalid")
	}
	subnet = subnet.Masked()
	addr := subnet.Addr()
	if addr.Zone() != "" {
		return Range{}, fieldErr("subnet", "%s: zones are not allowed", subnet)
	}
	if subnet.Bits() > addr.BitLen()-2 {
		return Range{}, fieldErr("subnet", "%s: too small to allocate from (need at most /%d)", subnet, addr.BitLen()-2)
	}
	r := Range{Subnet: subnet, Start: start, End: end, Gateway: gateway}
	first := addr.Next()
	if !r.Start.IsValid() {
		r.Start = first
	}
	if !r.End.IsValid() {
		r.End = lastAddr(subnet)
		if addr.Is4() {
			r.End = r.End.Prev()
		}
	}
	if !r.Gateway.IsValid() {
		r.Gateway = first
	}
	for _, f := range []struct {
		name string
		a    netip.Addr
	}{{"rangeStart", r.Start}, {"rangeEnd", r.End}, {"gateway", r.Gateway}} {
		if !subnet.Contains(f.a) {
			return Range{}, fieldErr(f.name, "%s is not inside subnet %s", f.a, subnet)
		}
		if r.isNetOrBroadcast(f.a) {
			return Range{}, fieldErr(f.name, "%s is the network or broadcast address of %s", f.a, subnet)
		}
	}
	if r.End.Less(r.Start) {
		return Range{}, fieldErr("rangeEnd", "%s is before rangeStart %s", r.End, r.Start)
	}
	return r, nil
}

// lastAddr returns the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		for j := 0; j < 8; j++ {
			if i*8+j >= bits {
				b[i] |= 0x80 >> j
			}
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func (r Range) isNetOrBroadcast(a netip.Addr) bool {
	if a == r.Subnet.Addr() {
		return true
	}
	return a.Is4() && a == lastAddr(r.Subnet)
}

// Contains reports whether a lies in [Start, End].
func (r Range) Contains(a netip.Addr) bool {
	return a.BitLen() == r.Start.BitLen() && !a.Less(r.Start) && !r.End.Less(a)
}

// Overlaps reports whether the spans of r and o share an address.
func (r Range) Overlaps(o Range) bool {
	return r.Contains(o.Start) || r.Contains(o.End) || o.Contains(r.Start) || o.Contains(r.End)
}

// String renders the range as subnet[start-end].
func (r Range) String() string {
	return fmt.Sprintf("%s[%s-%s]", r.Subnet, r.Start, r.End)
}

// RangeSet is an ordered list of ranges of one family; one address is
// allocated per set.
type RangeSet []Range

// Validate checks that the set is non-empty, of one family and free of
// overlaps. The returned FieldError names the offending index ("[1]").
func (s RangeSet) Validate() error {
	if len(s) == 0 {
		return fieldErr("", "empty range set")
	}
	for i, r := range s {
		if r.Start.Is4() != s[0].Start.Is4() {
			return fieldErr(fmt.Sprintf("[%d].subnet", i), "%s mixes address families with %s", r.Subnet, s[0].Subnet)
		}
		for j := 0; j < i; j++ {
			if r.Overlaps(s[j]) {
				return fieldErr(fmt.Sprintf("[%d]", i), "range %s overlaps [%d] %s", r, j, s[j])
			}
		}
	}
	return nil
}

// Contains reports whether a is inside one of the set's ranges.
func (s RangeSet) Contains(a netip.Addr) bool {
	return s.index(a) >= 0
}

// Range returns the range holding a, and whether there is one.
func (s RangeSet) Range(a netip.Addr) (Range, bool) {
	if i := s.index(a); i >= 0 {
		return s[i], true
	}
	return Range{}, false
}

func (s RangeSet) index(a netip.Addr) int {
	for i, r := range s {
		if r.Contains(a) {
			return i
		}
	}
	return -1
}

// reserved reports whether a must never be handed out: a gateway of any
// range in the set, or a network/broadcast address of its range.
func (s RangeSet) reserved(i int, a netip.Addr) bool {
	for _, r := range s {
		if r.Gateway == a {
			return true
		}
	}
	return s[i].isNetOrBroadcast(a)
}

// advance steps from a (inside s[i]) to the next candidate, moving to the
// next range and wrapping around at the end of the set.
func (s RangeSet) advance(i int, a netip.Addr) (int, netip.Addr) {
	if a.Less(s[i].End) {
		return i, a.Next()
	}
	i = (i + 1) % len(s)
	return i, s[i].Start
}

// Next returns the first free address after last (the most recently
// reserved one), wrapping around the set. When last is not inside the set
// the search starts at the set's first address. inUse reports allocated
// addresses. The search visits at most len(in-use)+len(gateways)+1
// candidates before finding a free one, so large IPv6 ranges are cheap.
func (s RangeSet) Next(last netip.Addr, inUse func(netip.Addr) bool) (netip.Addr, error) {
	if len(s) == 0 {
		return netip.Addr{}, ErrExhausted
	}
	i, cur := 0, s[0].Start
	if j := s.index(last); j >= 0 {
		i, cur = s.advance(j, last)
	}
	startI, start := i, cur
	for {
		if !s.reserved(i, cur) && !inUse(cur) {
			return cur, nil
		}
		i, cur = s.advance(i, cur)
		if i == startI && cur == start {
			return netip.Addr{}, ErrExhausted
		}
	}
}

// CheckRequested validates a specifically requested address.
func (s RangeSet) CheckRequested(a netip.Addr, inUse func(netip.Addr) bool) error {
	i := s.index(a)
	switch {
	case i < 0:
		return fmt.Errorf("%s: %w", a, ErrOutOfRange)
	case s.reserved(i, a):
		return fmt.Errorf("%s: %w", a, ErrReservedAddr)
	case inUse(a):
		return fmt.Errorf("%s: %w", a, ErrInUse)
	}
	return nil
}

// Overlaps reports the first pair of ranges, one from each set, that
// overlap.
func (s RangeSet) Overlaps(o RangeSet) (Range, Range, bool) {
	for _, a := range s {
		for _, b := range o {
			if a.Overlaps(b) {
				return a, b, true
			}
		}
	}
	return Range{}, Range{}, false
}
