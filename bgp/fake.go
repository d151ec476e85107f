package bgp

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
)

// Fake is a Speaker without BGP, for tests of what drives one: it records
// the peers and prefixes it is given, and Inject plays paths received from
// peers, filtered by the import policy exactly as GoBGP's are.
type Fake struct {
	mu       sync.Mutex
	running  bool
	cfg      Config
	peers    []Peer
	prefixes []netip.Prefix
	policy   ImportPolicy
	received [][]Candidate
	view     view
	changed  chan struct{}
	down     map[netip.Addr]bool
}

var _ Speaker = (*Fake)(nil)

// NewFake returns a stopped fake speaker.
func NewFake() *Fake {
	return &Fake{changed: make(chan struct{}, 1), view: view{seen: map[Rejection]bool{}}}
}

// Start implements Speaker.
func (f *Fake) Start(_ context.Context, cfg Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.running {
		return errors.New("fake bgp: already running")
	}
	f.running, f.cfg = true, cfg.withDefaults()
	return nil
}

// Stop implements Speaker.
func (f *Fake) Stop(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.running, f.peers, f.prefixes, f.received = false, nil, nil, nil
	f.view.learned, f.view.rejected = nil, nil
	signal(f.changed)
	return nil
}

// SetPeers implements Speaker.
func (f *Fake) SetPeers(_ context.Context, peers []Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		return errors.New("fake bgp: not started")
	}
	f.peers = slices.Clone(peers)
	return nil
}

// Advertise implements Speaker.
func (f *Fake) Advertise(_ context.Context, prefixes []netip.Prefix) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		return errors.New("fake bgp: not started")
	}
	f.prefixes = slices.Clone(prefixes)
	return nil
}

// SetImportPolicy implements Speaker.
func (f *Fake) SetImportPolicy(p ImportPolicy) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.policy = p
	f.refilter()
}

// Inject replaces what peers advertise: one list per prefix, in preference
// order (best first), as GoBGP's RIB holds them.
func (f *Fake) Inject(byPrefix ...[]Candidate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.received = slices.Clone(byPrefix)
	f.refilter()
}

func (f *Fake) refilter() {
	var learned []Route
	var rejected []Rejection
	for _, cs := range f.received {
		r, rej, ok := choose(f.policy, cs)
		rejected = append(rejected, rej...)
		if ok {
			learned = append(learned, r)
		}
	}
	sortRoutes(learned)
	for _, r := range rejected {
		if !f.view.seen[r] {
			f.view.seen[r] = true
			f.view.rejectedTotal++
		}
	}
	f.view.learned, f.view.rejected = learned, rejected
	signal(f.changed)
}

// Peers returns the sessions last set.
func (f *Fake) Peers() []Peer { f.mu.Lock(); defer f.mu.Unlock(); return slices.Clone(f.peers) }

// Advertised returns the prefixes last advertised.
func (f *Fake) Advertised() []netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.prefixes)
}

// Running reports whether the fake is started, and with what.
func (f *Fake) Running() (bool, Config) { f.mu.Lock(); defer f.mu.Unlock(); return f.running, f.cfg }

// Learned implements Speaker.
func (f *Fake) Learned() []Route {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.view.learned)
}

// Rejected implements Speaker.
func (f *Fake) Rejected() ([]Rejection, uint64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.view.rejected), f.view.rejectedTotal
}

// Changed implements Speaker.
func (f *Fake) Changed() <-chan struct{} { return f.changed }

// SetDown marks the session with addr down (true) or established again
// (false), as when the peer re-forms it.
func (f *Fake) SetDown(addr netip.Addr, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down == nil {
		f.down = map[netip.Addr]bool{}
	}
	f.down[addr] = down
}

// PeerStates implements Speaker: every peer is reported established,
// except those SetDown marked down ("active").
func (f *Fake) PeerStates(context.Context) ([]PeerState, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []PeerState
	for _, p := range f.peers {
		st := PeerState{Addr: p.Addr, ASN: p.ASN, State: "established", Established: true}
		if f.down[p.Addr] {
			st.State, st.Established = "active", false
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b PeerState) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}
