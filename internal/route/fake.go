package route

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
)

// Fake is an in-memory Kernel for rootless tests. It keeps the main table
// as a list, as the kernel does, so a writer that deleted and re-added, or
// added next to an existing route, would show up; it remembers which owner
// wrote each route and logs every write.
type Fake struct {
	mu     sync.Mutex
	routes []fakeRoute
	ops    []Op
	// Writes counts replaces and deletions.
	Writes int
}

type fakeRoute struct {
	KernelRoute
	owner string
}

// Op is one write the Fake received.
type Op struct {
	// Kind is "replace" or "delete".
	Kind string
	Dst  netip.Prefix
	// From is the owner of the route the write replaced or deleted ("" when
	// there was none, or it was not written through the Fake), To the
	// owner of the new route ("" for a deletion).
	From, To string
}

func (o Op) String() string { return fmt.Sprintf("%s %s %s->%s", o.Kind, o.Dst, o.From, o.To) }

// NewFake returns an empty fake kernel table.
func NewFake() *Fake { return &Fake{} }

// NewFakeTable returns a Table over a new Fake.
func NewFakeTable() (*Table, *Fake) {
	f := NewFake()
	return New(f, slog.Default()), f
}

// List implements Kernel.
func (f *Fake) List() ([]KernelRoute, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]KernelRoute, 0, len(f.routes))
	for _, r := range f.routes {
		out = append(out, r.KernelRoute)
	}
	return out, nil
}

// Replace implements Kernel: like RTM_NEWROUTE with NLM_F_REPLACE it
// replaces the route of the same destination and metric in place.
func (f *Fake) Replace(r Route, owner string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes++
	nr := fakeRoute{KernelRoute: KernelRoute{Route: r, Protocol: Protocol}, owner: owner}
	for i, have := range f.routes {
		if have.Dst == r.Dst && have.Priority == 0 {
			f.ops = append(f.ops, Op{Kind: "replace", Dst: r.Dst, From: have.owner, To: owner})
			f.routes[i] = nr
			return nil
		}
	}
	f.ops = append(f.ops, Op{Kind: "replace", Dst: r.Dst, To: owner})
	f.routes = append(f.routes, nr)
	return nil
}

// Delete implements Kernel.
func (f *Fake) Delete(kr KernelRoute) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes++
	for i, have := range f.routes {
		if have.KernelRoute == kr {
			f.ops = append(f.ops, Op{Kind: "delete", Dst: kr.Dst, From: have.owner})
			f.routes = slices.Delete(f.routes, i, i+1)
			return nil
		}
	}
	return nil
}

// Add puts a route into the table as another program (or an older weftd)
// would, without logging it as a write.
func (f *Fake) Add(kr KernelRoute) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes = append(f.routes, fakeRoute{KernelRoute: kr})
}

// Remove deletes the routes to dst as a hand-made `ip route del` would.
func (f *Fake) Remove(dst netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes = slices.DeleteFunc(f.routes, func(r fakeRoute) bool { return r.Dst == dst })
}

// DeviceGone drops the routes out of dev, as the kernel does when the
// device is deleted.
func (f *Fake) DeviceGone(dev string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.routes = slices.DeleteFunc(f.routes, func(r fakeRoute) bool { return r.Dev == dev })
}

// Routes returns the table's routes (of every protocol).
func (f *Fake) Routes() []KernelRoute {
	l, _ := f.List()
	return l
}

// Owners returns the owners of the routes to dst (more than one is a bug
// of the writer).
func (f *Fake) Owners(dst netip.Prefix) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, r := range f.routes {
		if r.Dst == dst {
			out = append(out, r.owner)
		}
	}
	return out
}

// CheckOneOwner returns an error naming every destination with more than
// one route.
func (f *Fake) CheckOneOwner() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := map[netip.Prefix]int{}
	var bad []string
	for _, r := range f.routes {
		if n[r.Dst]++; n[r.Dst] == 2 {
			bad = append(bad, r.Dst.String())
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("destinations with more than one route: %v", bad)
	}
	return nil
}

// Ops returns the writes so far, oldest first.
func (f *Fake) Ops() []Op {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.ops)
}
