// Package fake is an in-memory store.Store for rootless tests.
package fake

import (
	"context"
	"sync"

	"github.com/weftnet/weft/ipam/store"
)

// Opener hands out one in-memory store per data directory.
type Opener struct {
	mu     sync.Mutex
	stores map[string]*Store
}

// NewOpener returns an empty Opener.
func NewOpener() *Opener {
	return &Opener{stores: map[string]*Store{}}
}

// Open implements store.Opener.
func (o *Opener) Open(dataDir string) (store.Store, error) {
	return o.Get(dataDir), nil
}

// Get returns the store of dataDir, creating it empty.
func (o *Opener) Get(dataDir string) *Store {
	o.mu.Lock()
	defer o.mu.Unlock()
	s, ok := o.stores[dataDir]
	if !ok {
		s = &Store{}
		o.stores[dataDir] = s
	}
	return s
}

// Dirs returns the data directories opened so far.
func (o *Opener) Dirs() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	out := make([]string, 0, len(o.stores))
	for d := range o.stores {
		out = append(out, d)
	}
	return out
}

// Store is an in-memory store.Store. The zero value is empty and ready.
type Store struct {
	mu     sync.Mutex
	state  store.State
	writes int
}

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn store.UpdateFunc) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.state.Clone()
	changed, err := fn(next)
	if err != nil {
		return err
	}
	if changed {
		s.state = *next
		s.writes++
	}
	return nil
}

// View implements store.Store.
func (s *Store) View(ctx context.Context, fn func(*store.State) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	snap := s.state.Clone()
	s.mu.Unlock()
	return fn(snap)
}

// Snapshot returns a copy of the current state.
func (s *Store) Snapshot() *store.State {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state.Clone()
}

// Writes returns how many updates changed the state.
func (s *Store) Writes() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writes
}
