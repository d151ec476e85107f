package encapguard

import (
	"context"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
)

// Fake is an in-memory Guard for rootless tests: it keeps the last Spec of
// each kind and counts the Applies that changed it.
type Fake struct {
	mu     sync.Mutex
	specs  map[string]Spec
	drops  map[string]map[string]uint64
	Writes int
	// Err, when set, is returned by Apply.
	Err error
}

// NewFake returns an empty fake guard.
func NewFake() *Fake {
	return &Fake{specs: map[string]Spec{}, drops: map[string]map[string]uint64{}}
}

// Apply records s.
func (f *Fake) Apply(_ context.Context, s Spec) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Err != nil {
		return 0, f.Err
	}
	if s.PodIface == "" {
		s.PodIface = DefaultPodIface
	}
	if old, ok := f.specs[s.Encap.Kind]; ok && reflect.DeepEqual(chains(old), chains(s)) && reflect.DeepEqual(members(old), members(s)) && old.Encap == s.Encap {
		return 0, nil
	}
	f.specs[s.Encap.Kind] = s
	f.Writes++
	return 1, nil
}

// Remove forgets kind.
func (f *Fake) Remove(_ context.Context, kind string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.specs, kind)
	delete(f.drops, kind)
	return nil
}

// Drops returns what SetDrops stored.
func (f *Fake) Drops(_ context.Context, kind string) (map[string]uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return maps.Clone(f.drops[kind]), nil
}

// SetDrops sets the counters Drops reports for kind.
func (f *Fake) SetDrops(kind string, d map[string]uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.drops[kind] = maps.Clone(d)
}

// Spec returns the last applied spec of kind and whether there is one.
func (f *Fake) Spec(kind string) (Spec, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.specs[kind]
	return s, ok
}

// Admits reports whether the guard of kind, as last applied, lets an
// encapsulated packet from outer source sender with inner source inner
// through to this node (not arriving on the pod bridge).
func (f *Fake) Admits(kind string, sender, inner netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.specs[kind]
	if !ok {
		return true // no guard: everything passes, as on a node without one
	}
	for _, p := range s.Peers {
		if p.UnderlayIP != sender {
			continue
		}
		for _, c := range p.PodCIDRs {
			if c.Contains(inner) {
				return true
			}
		}
	}
	return false
}

// AdmitsDst reports whether the guard of kind, as last applied, lets an
// encapsulated packet for inner IPv4 destination dst through to this node
// (its sender and inner source aside): the ranges the kernel rule holds.
func (f *Fake) AdmitsDst(kind string, dst netip.Addr) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.specs[kind]
	rs := ranges(s.Local)
	if !ok || len(rs) == 0 {
		return true
	}
	if !dst.Is4() {
		return false
	}
	d := v4(dst)
	return slices.ContainsFunc(rs, func(r [2]uint32) bool { return d >= r[0] && d <= r[1] })
}
