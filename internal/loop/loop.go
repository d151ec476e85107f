// Package loop is the level-triggered control loop every weftd controller
// runs (the agent's node loop, the policy controller, bandwidth shaping
// next): events only mark the state dirty, one sync computes everything
// from the listers, marks that arrive before a sync starts collapse into
// it, syncs are rate-limited, a failed sync is retried with exponential
// backoff, and a periodic resync repairs drift. A sync is "full" when it
// must read the kernel back instead of trusting its own memory: the first
// one, each periodic resync, and every retry after a failure.
package loop

import (
	"context"
	"log/slog"
	"time"
)

// SyncFunc converges to the whole desired state. full asks it to read back
// and repair what it owns instead of trusting what it last wrote.
type SyncFunc func(ctx context.Context, full bool) error

// Config is a loop's behaviour. Zero durations take the defaults below.
type Config struct {
	Sync SyncFunc
	// MinInterval is the least time between the starts of two syncs; marks
	// that arrive meanwhile coalesce into the next sync. 0: no limit.
	MinInterval time.Duration
	// Resync is the period of the full resync; default 30s.
	Resync time.Duration
	// BackoffMin and BackoffMax bound the retry delay after a failed sync,
	// doubling from min to max; defaults 200ms and 30s.
	BackoffMin, BackoffMax time.Duration
	Log                    *slog.Logger // failed syncs; may be nil
}

// Runner runs one loop. MarkDirty may be called from any goroutine, before
// or during Run.
type Runner struct {
	cfg   Config
	dirty chan struct{}
}

// New returns a runner for cfg.
func New(cfg Config) *Runner {
	if cfg.Resync <= 0 {
		cfg.Resync = 30 * time.Second
	}
	if cfg.BackoffMin <= 0 {
		cfg.BackoffMin = 200 * time.Millisecond
	}
	if cfg.BackoffMax < cfg.BackoffMin {
		cfg.BackoffMax = max(30*time.Second, cfg.BackoffMin)
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Runner{cfg: cfg, dirty: make(chan struct{}, 1)}
}

// MarkDirty asks for a sync. It never blocks: any number of marks before
// the next sync starts become that one sync.
func (r *Runner) MarkDirty() {
	select {
	case r.dirty <- struct{}{}:
	default:
	}
}

// Run syncs at once (full), then on every mark, periodic resync and retry,
// until ctx ends. It returns nil when ctx is done.
func (r *Runner) Run(ctx context.Context) error {
	resync := time.NewTicker(r.cfg.Resync)
	defer resync.Stop()
	var backoff time.Duration
	var last time.Time
	full := true
	for {
		if wait := r.cfg.MinInterval - time.Since(last); !last.IsZero() && wait > 0 {
			if !Sleep(ctx, wait) {
				return nil
			}
		}
		select { // a mark that arrived before this sync starts is covered by it
		case <-r.dirty:
		default:
		}
		last = time.Now()
		if err := r.cfg.Sync(ctx, full); err != nil && ctx.Err() == nil {
			backoff = r.next(backoff)
			r.cfg.Log.Error("sync failed; retrying", "err", err, "retry_in", backoff)
			go r.markAfter(ctx, backoff)
			full = true
		} else {
			backoff, full = 0, false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-r.dirty:
		case <-resync.C:
			full = true
		}
	}
}

// next is the retry delay after one more failure.
func (r *Runner) next(d time.Duration) time.Duration {
	if d == 0 {
		return r.cfg.BackoffMin
	}
	return min(2*d, r.cfg.BackoffMax)
}

func (r *Runner) markAfter(ctx context.Context, d time.Duration) {
	if Sleep(ctx, d) {
		r.MarkDirty()
	}
}

// Sleep waits d or until ctx ends; it reports whether d passed.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
