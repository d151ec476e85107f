package conntrack

import (
	"net/netip"
	"sync"
)

// Fake is an in-memory Table for rootless tests.
type Fake struct {
	mu      sync.Mutex
	flows   []Flow
	Local   []netip.Addr // what LocalAddrs returns
	Dumps   int          // DeleteFunc calls so far (one table dump each)
	Deleted []Flow       // every flow deleted, in order
}

// Add puts flows into the table.
func (f *Fake) Add(flows ...Flow) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.flows = append(f.flows, flows...)
}

// Flows returns the flows the table holds.
func (f *Fake) Flows() []Flow {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]Flow(nil), f.flows...)
}

// DeleteFunc implements Table.
func (f *Fake) DeleteFunc(family Family, match func(Flow) bool) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Dumps++
	kept, n := f.flows[:0], 0
	for _, fl := range f.flows {
		if FamilyOf(fl.Orig.Src) == family && match(fl) {
			f.Deleted = append(f.Deleted, fl)
			n++
			continue
		}
		kept = append(kept, fl)
	}
	f.flows = kept
	return n, nil
}

// LocalAddrs returns Local.
func (f *Fake) LocalAddrs() ([]netip.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]netip.Addr(nil), f.Local...), nil
}
