// Package store defines the allocation store of weft-ipam: the state of one
// network's allocations and a transactional interface over it. Implementations
// live in sub-packages: disk (file-locked, crash-safe) and fake (in memory).
package store

import (
	"context"
	"net/netip"
	"slices"
)

// Allocation is one address held by one attachment (container ID, ifname).
type Allocation struct {
	IP          netip.Addr `json:"ip"`
	ContainerID string     `json:"id"`
	IfName      string     `json:"ifname"`
}

// State is everything a network's store records.
type State struct {
	// Allocations, in allocation order.
	Allocations []Allocation `json:"allocations"`
	// LastReserved holds, per range-set index, the address most recently
	// handed out from that set; the next search starts after it.
	LastReserved []netip.Addr `json:"lastReserved,omitempty"`
}

// Clone returns a deep copy of s.
func (s *State) Clone() *State {
	return &State{
		Allocations:  slices.Clone(s.Allocations),
		LastReserved: slices.Clone(s.LastReserved),
	}
}

// Last returns the last reserved address of range set i (zero if none).
func (s *State) Last(i int) netip.Addr {
	if i < len(s.LastReserved) {
		return s.LastReserved[i]
	}
	return netip.Addr{}
}

// SetLast records a as the last reserved address of range set i.
func (s *State) SetLast(i int, a netip.Addr) {
	for len(s.LastReserved) <= i {
		s.LastReserved = append(s.LastReserved, netip.Addr{})
	}
	s.LastReserved[i] = a
}

// Find returns the allocations of one attachment.
func (s *State) Find(containerID, ifName string) []Allocation {
	var out []Allocation
	for _, a := range s.Allocations {
		if a.ContainerID == containerID && a.IfName == ifName {
			out = append(out, a)
		}
	}
	return out
}

// Release removes every allocation for which drop returns true and returns
// how many were removed.
func (s *State) Release(drop func(Allocation) bool) int {
	n := len(s.Allocations)
	s.Allocations = slices.DeleteFunc(s.Allocations, drop)
	return n - len(s.Allocations)
}

// InUse returns a membership test over the allocated addresses.
func (s *State) InUse() func(netip.Addr) bool {
	m := make(map[netip.Addr]struct{}, len(s.Allocations))
	for _, a := range s.Allocations {
		m[a.IP] = struct{}{}
	}
	return func(a netip.Addr) bool {
		_, ok := m[a]
		return ok
	}
}

// UpdateFunc mutates the state it is given and reports whether it changed
// anything. Returning an error discards every change.
type UpdateFunc func(s *State) (changed bool, err error)

// Store is one network's allocation store.
type Store interface {
	// Update runs fn under an exclusive lock and persists the state
	// atomically when fn reports a change. If the store does not exist yet
	// and fn changes nothing, nothing is created.
	Update(ctx context.Context, fn UpdateFunc) error
	// View runs fn on a snapshot of the state under a shared lock.
	View(ctx context.Context, fn func(s *State) error) error
}

// Opener opens the store of one network by its data directory.
type Opener interface {
	Open(dataDir string) (Store, error)
}
