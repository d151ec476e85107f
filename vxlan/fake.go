package vxlan

import (
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/weftnet/weft/internal/route"
)

// Fake is an in-memory Kernel for rootless tests. It records the number of
// mutating calls so tests can assert that a converged state is left alone.
// It is also the node's route table (a route.Kernel over a route.Fake),
// so routes through the device vanish with it, as in the kernel, and route
// writes count in Writes.
type Fake struct {
	mu      sync.Mutex
	links   map[string]int // name -> MTU (underlay links)
	dev     *DeviceSpec
	devUp   bool
	devMAC  string
	nextMAC int
	addrs   map[netip.Prefix]bool
	fdb     map[string]netip.Addr
	neigh   map[netip.Addr]string
	routes  *route.Fake
	table   *route.Table
	// Writes counts mutating calls.
	Writes int
}

// NewFake returns a fake kernel with the given underlay links and MTUs.
func NewFake(links map[string]int) *Fake {
	f := &Fake{links: links, routes: route.NewFake()}
	f.table = route.New(f, slog.Default())
	f.reset()
	return f
}

func (f *Fake) reset() {
	f.addrs = map[netip.Prefix]bool{}
	f.fdb = map[string]netip.Addr{}
	f.neigh = map[netip.Addr]string{}
	f.routes.DeviceGone(DefaultDevice)
}

func (f *Fake) EnsureDevice(spec DeviceSpec) (Device, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.links[spec.UnderlayLink]; !ok {
		return Device{}, fmt.Errorf("underlay link %q not found", spec.UnderlayLink)
	}
	adopted := false
	if f.dev != nil {
		d := *f.dev
		d.MTU = spec.MTU
		adopted = d == spec
	}
	if !adopted {
		f.Writes++
		f.devUp = false
		f.nextMAC++
		f.devMAC = fmt.Sprintf("02:00:00:00:00:%02x", f.nextMAC)
		f.reset()
	} else if f.dev.MTU != spec.MTU {
		f.Writes++
	}
	s := spec
	f.dev = &s
	return Device{Name: spec.Name, Index: 100, MAC: f.devMAC, MTU: spec.MTU, Adopted: adopted, Up: f.devUp}, nil
}

// SetUp implements Kernel.
func (f *Fake) SetUp(Device) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dev == nil {
		return false, fmt.Errorf("no device")
	}
	if f.devUp {
		return false, nil
	}
	f.Writes++
	f.devUp = true
	return true, nil
}

// Up reports whether the device exists and is up.
func (f *Fake) Up() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dev != nil && f.devUp
}

func (f *Fake) DeleteDevice(string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.dev != nil {
		f.Writes++
	}
	f.dev = nil
	f.reset()
	return nil
}

// HasDevice reports whether the device exists.
func (f *Fake) HasDevice() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.dev != nil
}

func (f *Fake) LinkMTU(name string) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, ok := f.links[name]
	if !ok {
		return 0, fmt.Errorf("link %q not found", name)
	}
	return m, nil
}

func (f *Fake) check() error {
	if f.dev == nil {
		return fmt.Errorf("device missing")
	}
	return nil
}

func (f *Fake) Addrs(Device) ([]netip.Prefix, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return nil, err
	}
	var out []netip.Prefix
	for p := range f.addrs {
		out = append(out, p)
	}
	return out, nil
}

func (f *Fake) AddAddr(_ Device, p netip.Prefix) error {
	return f.mutate(func() { f.addrs[p] = true })
}

func (f *Fake) DelAddr(_ Device, p netip.Prefix) error {
	return f.mutate(func() { delete(f.addrs, p) })
}

func (f *Fake) mutate(fn func()) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return err
	}
	f.Writes++
	fn()
	return nil
}

func (f *Fake) FDB(Device) ([]FDBEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return nil, err
	}
	var out []FDBEntry
	for m, ip := range f.fdb {
		out = append(out, FDBEntry{MAC: m, Dst: ip})
	}
	return out, nil
}

func (f *Fake) SetFDB(_ Device, e FDBEntry) error {
	return f.mutate(func() { f.fdb[e.MAC] = e.Dst })
}

func (f *Fake) DelFDB(_ Device, e FDBEntry) error {
	return f.mutate(func() { delete(f.fdb, e.MAC) })
}

func (f *Fake) Neighs(Device) ([]NeighEntry, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return nil, err
	}
	var out []NeighEntry
	for ip, m := range f.neigh {
		out = append(out, NeighEntry{IP: ip, MAC: m})
	}
	return out, nil
}

func (f *Fake) SetNeigh(_ Device, e NeighEntry) error {
	return f.mutate(func() { f.neigh[e.IP] = e.MAC })
}

func (f *Fake) DelNeigh(_ Device, e NeighEntry) error {
	return f.mutate(func() { delete(f.neigh, e.IP) })
}

// Routes returns a route writer over the fake (one per Fake; a test of a
// restart makes a new one with route.New(f, log)).
func (f *Fake) Routes() *route.Table { return f.table }

// List implements route.Kernel.
func (f *Fake) List() ([]route.KernelRoute, error) { return f.routes.List() }

// Replace implements route.Kernel.
func (f *Fake) Replace(r route.Route, owner string) error {
	if err := f.routes.Replace(r, owner); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes++
	return nil
}

// Delete implements route.Kernel.
func (f *Fake) Delete(kr route.KernelRoute) error {
	if err := f.routes.Delete(kr); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes++
	return nil
}

// RouteKernel is the fake's route table (to add another program's routes
// or inspect the owners).
func (f *Fake) RouteKernel() *route.Fake { return f.routes }

// RemoveRoute deletes the route to dst as a hand-made `ip route del`.
func (f *Fake) RemoveRoute(dst netip.Prefix) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Writes++
	f.routes.Remove(dst)
}

// Snapshot returns the fake's per-peer state.
func (f *Fake) Snapshot() State {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := State{FDB: map[string]netip.Addr{}, Neigh: map[netip.Addr]string{}, Routes: map[netip.Prefix]netip.Addr{}}
	for k, v := range f.fdb {
		st.FDB[k] = v
	}
	for k, v := range f.neigh {
		st.Neigh[k] = v
	}
	for _, r := range f.routes.Routes() {
		if r.Dev == DefaultDevice && r.OnLink {
			st.Routes[r.Dst] = r.Gw
		}
	}
	return st
}
