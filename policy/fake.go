package policy

import (
	"context"
	"sync"

	"github.com/weftnet/weft/policy/rules"
)

// FakeDataplane records what it is asked to apply, for controller tests.
type FakeDataplane struct {
	mu       sync.Mutex
	states   []*rules.State
	readBack int
	err      error
	applied  chan struct{}
	gate     chan struct{} // when set, Apply waits for it to close
}

// NewFakeDataplane returns an empty fake.
func NewFakeDataplane() *FakeDataplane {
	return &FakeDataplane{applied: make(chan struct{}, 1)}
}

// Apply implements Dataplane.
func (f *FakeDataplane) Apply(ctx context.Context, st *rules.State, readBack bool) (ApplyStats, error) {
	f.mu.Lock()
	gate := f.gate
	f.mu.Unlock()
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return ApplyStats{}, ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if readBack {
		f.readBack++
	}
	if f.err != nil {
		return ApplyStats{}, f.err
	}
	f.states = append(f.states, st)
	select {
	case f.applied <- struct{}{}:
	default:
	}
	return ApplyStats{Restored: true, ChainsWritten: len(st.Chains)}, nil
}

// SetError makes every following Apply fail with err (nil: succeed).
func (f *FakeDataplane) SetError(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

// Last returns the last applied State (nil if none) and the count.
func (f *FakeDataplane) Last() (*rules.State, int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.states) == 0 {
		return nil, 0
	}
	return f.states[len(f.states)-1], len(f.states)
}

// ReadBacks counts Apply calls that asked for a kernel read-back.
func (f *FakeDataplane) ReadBacks() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.readBack
}

// Applied is signalled (coalesced) after each successful Apply.
func (f *FakeDataplane) Applied() <-chan struct{} { return f.applied }

// Hold makes Apply block until the returned release is called, so a test
// can pile up events behind a sync in progress.
func (f *FakeDataplane) Hold() (release func()) {
	g := make(chan struct{})
	f.mu.Lock()
	f.gate = g
	f.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			f.mu.Lock()
			f.gate = nil
			f.mu.Unlock()
			close(g)
		})
	}
}
