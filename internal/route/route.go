// Package route is Weft's one writer of kernel routes. Every backend hands
// it the whole set of routes it wants (owner = the backend's type), and the
// Table converges the main routing table to the union in one Apply:
// replacing what differs, deleting what it owns and nobody wants, and
// nothing else. Calling Apply again (the agent's periodic resync does)
// re-reads the kernel and repairs drift.
//
// Ownership is by route protocol number, not by device: every route Weft
// writes carries Protocol (rtm_protocol), so a route out of the underlay
// interface (BGP) is as recognisably Weft's as one out of weft.vxlan, and
// routes of any other protocol are never touched. A weftd older than the
// protocol number wrote RTPROT_STATIC routes on its own devices; devices
// declared with Adopt have those routes adopted (replaced in place by one
// RTM_NEWROUTE, never duplicated) or deleted.
//
// One owner per destination prefix: a destination wanted by two owners
// belongs to the one that started wanting it last (a backend being
// switched to takes each peer's destination from the old one as soon as it
// wants it), and the change of owner is a single atomic replace, never a
// delete and an add. When that owner lets go, the other owner's route
// replaces it, again in one step.
package route

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
)

// Protocol is the route protocol number of every route Weft writes. 87
// (ASCII 'W') is in no /etc/iproute2/rt_protos of Debian or FRR (which use
// 0-18, 42, 99 and 186-198), nor used by Calico (80), BIRD (12), Cilium or
// kube-router. `ip route show proto 87` lists Weft's routes.
const Protocol = 87

// legacyProtocol is what a weftd before Protocol wrote (RTPROT_STATIC).
const legacyProtocol = 4

// Route is one wanted route in the main table.
type Route struct {
	Dst netip.Prefix
	// Dev is the output device.
	Dev string
	// Gw is the next hop; the zero Addr is a directly connected route.
	Gw     netip.Addr
	OnLink bool
	// Src is the preferred source address (zero: the kernel's choice).
	Src netip.Addr
	// MTU of the route (0: the device's).
	MTU int
}

func (r Route) String() string {
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += " dev " + r.Dev
	if r.OnLink {
		s += " onlink"
	}
	if r.Src.IsValid() {
		s += " src " + r.Src.String()
	}
	if r.MTU != 0 {
		s += fmt.Sprintf(" mtu %d", r.MTU)
	}
	return s
}

// KernelRoute is a main-table unicast route as the kernel holds it.
type KernelRoute struct {
	Route
	Protocol int
	// Priority is the metric; Weft writes 0.
	Priority int
}

// Kernel is the slice of netlink the Table uses: a real one (Netlink) and
// an in-memory one for tests (Fake).
type Kernel interface {
	// List returns the main table's unicast routes of both families.
	List() ([]KernelRoute, error)
	// Replace installs r with Protocol and metric 0 in one RTM_NEWROUTE
	// (NLM_F_CREATE|NLM_F_REPLACE), replacing any route to the same
	// destination and metric. owner is for the record only.
	Replace(r Route, owner string) error
	// Delete removes exactly kr; a missing route is success.
	Delete(kr KernelRoute) error
}

// Writer is what a backend sees of the Table.
type Writer interface {
	// Apply makes routes the complete set of owner and converges the
	// kernel; it returns the number of routes replaced or deleted.
	Apply(ctx context.Context, owner string, routes []Route) (int, error)
	// Release drops owner's set: its routes another owner wants are
	// replaced by that owner's, the rest are deleted.
	Release(ctx context.Context, owner string) (int, error)
	// Adopt declares that RTPROT_STATIC routes on dev were written by an
	// older weftd and are Weft's.
	Adopt(dev string)
}

// Table is the route writer. It is safe for concurrent use; all backends
// of a node share one.
type Table struct {
	k   Kernel
	log *slog.Logger

	mu     sync.Mutex
	sets   map[string]map[netip.Prefix]claim // owner -> dst -> claim
	seq    uint64
	legacy map[string]bool
	// wrote is the owner whose route this Table last wrote per destination
	// (for the log of handovers only: the kernel does not know owners).
	wrote map[netip.Prefix]string
}

type claim struct {
	r   Route
	seq uint64 // when the owner started wanting the destination
}

// New returns a Table over k.
func New(k Kernel, log *slog.Logger) *Table {
	return &Table{k: k, log: log.With("component", "routes"), sets: map[string]map[netip.Prefix]claim{},
		legacy: map[string]bool{}, wrote: map[netip.Prefix]string{}}
}

// Adopt implements Writer.
func (t *Table) Adopt(dev string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.legacy[dev] = true
}

// Apply implements Writer. A route with an invalid destination or no
// device is refused, the others are still converged.
func (t *Table) Apply(ctx context.Context, owner string, routes []Route) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	old := t.sets[owner]
	set := make(map[netip.Prefix]claim, len(routes))
	var errs []error
	for _, r := range routes {
		if !r.Dst.IsValid() || r.Dev == "" {
			errs = append(errs, fmt.Errorf("route %v: needs a destination and a device", r))
			continue
		}
		r.Dst = r.Dst.Masked()
		c, ok := old[r.Dst]
		if !ok {
			t.seq++
			c.seq = t.seq
		}
		c.r = r
		set[r.Dst] = c
	}
	t.sets[owner] = set
	n, err := t.converge(ctx)
	return n, errors.Join(append(errs, err)...)
}

// Release implements Writer.
func (t *Table) Release(ctx context.Context, owner string) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.sets, owner)
	return t.converge(ctx)
}

// Renew makes owner the latest claimer of every destination it wants,
// without touching the kernel: the next converge gives it each of them
// (a backend taken over again while it drained away wins its
// destinations back from the one that superseded it).
func (t *Table) Renew(owner string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	set := t.sets[owner]
	dsts := make([]netip.Prefix, 0, len(set))
	for dst := range set {
		dsts = append(dsts, dst)
	}
	slices.SortFunc(dsts, func(a, b netip.Prefix) int { return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits()) })
	for _, dst := range dsts {
		t.seq++
		c := set[dst]
		c.seq = t.seq
		set[dst] = c
	}
}

// Purge drops every set and deletes every route Weft owns (uninstall).
func (t *Table) Purge(ctx context.Context) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	clear(t.sets)
	return t.converge(ctx)
}

// Resync re-reads the kernel and repairs drift without changing any set.
func (t *Table) Resync(ctx context.Context) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.converge(ctx)
}

// Owners returns the owner of every destination the Table wants.
func (t *Table) Owners() map[netip.Prefix]string {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := map[netip.Prefix]string{}
	for dst, w := range t.wanted() {
		out[dst] = w.owner
	}
	return out
}

type want struct {
	r     Route
	owner string
	seq   uint64
}

// wanted resolves every destination to its one owner: the latest claim.
func (t *Table) wanted() map[netip.Prefix]want {
	out := map[netip.Prefix]want{}
	for owner, set := range t.sets {
		for dst, c := range set {
			if w, ok := out[dst]; !ok || c.seq > w.seq {
				out[dst] = want{r: c.r, owner: owner, seq: c.seq}
			}
		}
	}
	return out
}

// owns reports whether kr is Weft's to change or delete.
func (t *Table) owns(kr KernelRoute) bool {
	return kr.Protocol == Protocol || (kr.Protocol == legacyProtocol && t.legacy[kr.Dev])
}

// converge makes the kernel hold exactly the wanted routes among those
// Weft owns: replacements first, then deletions, so a destination handed
// from one owner to another is never without a route.
func (t *Table) converge(ctx context.Context) (int, error) {
	have, err := t.k.List()
	if err != nil {
		return 0, fmt.Errorf("list routes: %w", err)
	}
	wanted := t.wanted()
	byDst := map[netip.Prefix][]KernelRoute{}
	for _, kr := range have {
		byDst[kr.Dst] = append(byDst[kr.Dst], kr)
	}
	changes := 0
	var errs []error
	dsts := make([]netip.Prefix, 0, len(wanted))
	for dst := range wanted {
		dsts = append(dsts, dst)
	}
	slices.SortFunc(dsts, func(a, b netip.Prefix) int { return cmp.Or(a.Addr().Compare(b.Addr()), a.Bits()-b.Bits()) })
	for _, dst := range dsts {
		w := wanted[dst]
		switch t.state(byDst[dst], w.r) {
		case inPlace:
			continue
		case foreign:
			errs = append(errs, fmt.Errorf("route %v: the destination has a route Weft does not own (another protocol); left alone", w.r))
			continue
		}
		if err := ctx.Err(); err != nil {
			return changes, errors.Join(append(errs, err)...)
		}
		if err := t.k.Replace(w.r, w.owner); err != nil {
			errs = append(errs, fmt.Errorf("replace route %v (%s): %w", w.r, w.owner, err))
			continue
		}
		if prev := t.wrote[dst]; prev != "" && prev != w.owner {
			t.log.Info("route handed over", "dst", dst, "from", prev, "to", w.owner, "route", w.r.String())
		}
		t.wrote[dst] = w.owner
		changes++
	}
	for _, kr := range have {
		if !t.owns(kr) {
			continue
		}
		if _, ok := wanted[kr.Dst]; ok && kr.Priority == 0 {
			continue // the wanted route, or the one the replace above took over
		}
		if err := t.k.Delete(kr); err != nil {
			errs = append(errs, fmt.Errorf("delete route %v: %w", kr.Route, err))
			continue
		}
		delete(t.wrote, kr.Dst)
		changes++
	}
	return changes, errors.Join(errs...)
}

type dstState int

const (
	needsReplace dstState = iota
	inPlace
	foreign
)

// state says what the kernel's routes to one destination need for r.
func (t *Table) state(krs []KernelRoute, r Route) dstState {
	for _, kr := range krs {
		if kr.Priority != 0 {
			continue // another metric: not what a replace would hit
		}
		if !t.owns(kr) {
			return foreign
		}
		if kr.Protocol == Protocol && kr.Route == r {
			return inPlace
		}
	}
	return needsReplace
}
