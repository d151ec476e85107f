package e2e

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// recorder is a testing.TB that records failures instead of failing.
type recorder struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Helper()             {}
func (r *recorder) Logf(string, ...any) {}
func (r *recorder) Errorf(f string, a ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(f, a...))
}

// TestTruthRejectsBadDataplanes runs truth (no cluster needed) against
// fake dataplanes: one that answers right, one where a denied pair flaps
// (allowed on every other probe), and one where a UDP deny comes back as
// "connection refused" (the packet reached the pod). Only the first passes.
func TestTruthRejectsBadDataplanes(t *testing.T) {
	xa, xb := pp{"x", "a"}, pp{"x", "b"}
	want := func(f, to pp, s probeSpec) bool { return !(f == xa && to == xb) }
	right := func(f, to pp, s probeSpec) probeResult {
		if f != to && !want(f, to, s) {
			return probeResult{detail: "read udp: i/o timeout"}
		}
		return probeResult{allowed: true, detail: to.pod}
	}
	var mu sync.Mutex
	calls := 0
	cases := map[string]func(f, to pp, s probeSpec) probeResult{
		"right": right,
		"flapping": func(f, to pp, s probeSpec) probeResult {
			if f == xa && to == xb {
				mu.Lock()
				defer mu.Unlock()
				if calls++; calls%2 == 0 {
					return probeResult{allowed: true, detail: to.pod}
				}
			}
			return right(f, to, s)
		},
		"refused": func(f, to pp, s probeSpec) probeResult {
			if f == xa && to == xb {
				return probeResult{detail: "read udp: connection refused"}
			}
			return right(f, to, s)
		},
		"wrong answerer": func(f, to pp, s probeSpec) probeResult {
			if f == xb && to == xa {
				return probeResult{allowed: true, detail: "c"}
			}
			return right(f, to, s)
		},
	}
	for name, fn := range cases {
		r := &recorder{TB: t}
		e := &polEnv{t: r, probeFn: fn, converge: 2 * time.Second}
		e.truth(name, []probeSpec{udp80}, want)
		if failed := len(r.errs) > 0; failed != (name != "right") {
			t.Errorf("%s: truth failed=%v: %s", name, failed, strings.Join(r.errs, "; "))
		}
	}
}
