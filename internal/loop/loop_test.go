package loop

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// recorder is a SyncFunc that records each call and can block or fail.
type recorder struct {
	mu      sync.Mutex
	calls   []call
	fail    int           // fail this many calls first
	gate    chan struct{} // when set, each call waits for a receive-able value
	entered chan struct{} // with gate: a call is waiting in it
	done    chan call     // every finished call, buffered
}

type call struct {
	at   time.Time
	full bool
}

func newRecorder() *recorder { return &recorder{done: make(chan call, 1000)} }

func (r *recorder) sync(ctx context.Context, full bool) error {
	if r.gate != nil {
		r.entered <- struct{}{}
		select {
		case <-r.gate:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	r.mu.Lock()
	c := call{at: time.Now(), full: full}
	r.calls = append(r.calls, c)
	failing := len(r.calls) <= r.fail
	r.mu.Unlock()
	r.done <- c
	if failing {
		return errors.New("injected failure")
	}
	return nil
}

func (r *recorder) snapshot() []call {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]call(nil), r.calls...)
}

// start runs a loop over rec until the test ends.
func start(t *testing.T, cfg Config, rec *recorder) *Runner {
	t.Helper()
	cfg.Sync = rec.sync
	r := New(cfg)
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-stopped:
			if err != nil {
				t.Errorf("Run returned %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Run did not stop with its context")
		}
	})
	return r
}

func next(t *testing.T, rec *recorder, within time.Duration) call {
	t.Helper()
	select {
	case c := <-rec.done:
		return c
	case <-time.After(within):
		t.Fatalf("no sync within %v (had %d)", within, len(rec.snapshot()))
		return call{}
	}
}

func quiet(t *testing.T, rec *recorder, d time.Duration) {
	t.Helper()
	select {
	case c := <-rec.done:
		t.Fatalf("unexpected sync (full=%v); all: %d", c.full, len(rec.snapshot()))
	case <-time.After(d):
	}
}

// TestStormCollapses: a thousand marks while a sync runs become one more
// sync, not a thousand; the first sync is full, the one after the marks
// incremental.
func TestStormCollapses(t *testing.T) {
	rec := newRecorder()
	rec.gate, rec.entered = make(chan struct{}), make(chan struct{}, 10)
	r := start(t, Config{Resync: time.Hour}, rec)
	<-rec.entered
	for i := 0; i < 1000; i++ { // the first sync is blocked in the gate
		r.MarkDirty()
	}
	rec.gate <- struct{}{}
	if c := next(t, rec, 2*time.Second); !c.full {
		t.Fatal("the first sync is not full")
	}
	<-rec.entered
	for i := 0; i < 1000; i++ { // the second sync is now waiting in the gate
		r.MarkDirty()
	}
	close(rec.gate)
	if c := next(t, rec, 2*time.Second); c.full {
		t.Fatal("a sync for marks is full")
	}
	next(t, rec, 2*time.Second) // the marks made during the second sync
	quiet(t, rec, 200*time.Millisecond)
	if n := len(rec.snapshot()); n != 3 {
		t.Fatalf("%d syncs for two storms, want 3", n)
	}
}

// TestRateLimit: marks spread over a while never start syncs closer than
// MinInterval.
func TestRateLimit(t *testing.T) {
	rec := newRecorder()
	r := start(t, Config{Resync: time.Hour, MinInterval: 50 * time.Millisecond}, rec)
	next(t, rec, time.Second)
	stop := time.Now().Add(400 * time.Millisecond)
	for time.Now().Before(stop) {
		r.MarkDirty()
		time.Sleep(time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	calls := rec.snapshot()
	if len(calls) < 3 || len(calls) > 10 {
		t.Fatalf("%d syncs in 400ms of marks at a 50ms limit", len(calls))
	}
	for i := 1; i < len(calls); i++ {
		if gap := calls[i].at.Sub(calls[i-1].at); gap < 45*time.Millisecond {
			t.Errorf("syncs %d and %d only %v apart", i-1, i, gap)
		}
	}
}

// TestBackoff: failed syncs are retried without any mark, each retry full,
// the delays doubling from BackoffMin to BackoffMax; after a success the
// loop is quiet again.
func TestBackoff(t *testing.T) {
	rec := newRecorder()
	rec.fail = 5
	start(t, Config{Resync: time.Hour, BackoffMin: 20 * time.Millisecond, BackoffMax: 80 * time.Millisecond}, rec)
	for i := 0; i < 6; i++ {
		if c := next(t, rec, 2*time.Second); !c.full {
			t.Fatalf("sync %d is not full", i)
		}
	}
	quiet(t, rec, 300*time.Millisecond)
	calls := rec.snapshot()
	want := []time.Duration{20, 40, 80, 80, 80}
	for i, w := range want {
		gap := calls[i+1].at.Sub(calls[i].at)
		if w *= time.Millisecond; gap < w-5*time.Millisecond || gap > w+150*time.Millisecond {
			t.Errorf("retry %d after %v, want about %v", i+1, gap, w)
		}
	}
}

// TestPeriodicResync: with no marks at all the loop still syncs, fully,
// every Resync; a mark in between gives an incremental sync.
func TestPeriodicResync(t *testing.T) {
	rec := newRecorder()
	r := start(t, Config{Resync: 60 * time.Millisecond}, rec)
	for i := 0; i < 3; i++ {
		if c := next(t, rec, time.Second); !c.full {
			t.Fatalf("sync %d is not full", i)
		}
	}
	r.MarkDirty()
	if c := next(t, rec, time.Second); c.full {
		t.Fatal("the sync for a mark is full")
	}
	if c := next(t, rec, time.Second); !c.full {
		t.Fatal("the resync after it is not full")
	}
}

// TestStopsWithContext: Run returns when its context ends, also while a
// retry is pending and while a sync waits out the rate limit.
func TestStopsWithContext(t *testing.T) {
	rec := newRecorder()
	rec.fail = 1000
	r := New(Config{Sync: rec.sync, Resync: time.Hour, MinInterval: time.Hour, BackoffMin: time.Hour})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- r.Run(ctx) }()
	next(t, rec, time.Second)
	r.MarkDirty() // the next sync now waits out MinInterval
	time.Sleep(20 * time.Millisecond)
	cancel()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if n := len(rec.snapshot()); n != 1 {
		t.Fatalf("%d syncs, want 1", n)
	}
}
