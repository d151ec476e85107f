package podnet

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
)

// An ADD whose container's lock another ADD holds waits, then fails with
// code 11 (try again later) instead of blocking for good; once the other
// ADD is done it gets the lock.
func TestLockAddTimesOut(t *testing.T) {
	dir := t.TempDir()
	held, err := endpoint.LockAdd(context.Background(), dir, "c1")
	if err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	_, err = lockAdd(context.Background(), dir, "c1", 100*time.Millisecond)
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrTryAgainLater {
		t.Fatalf("lock held elsewhere: %v, want code %d", err, types.ErrTryAgainLater)
	}
	if d := time.Since(t0); d < 100*time.Millisecond || d > 2*time.Second {
		t.Errorf("gave up after %v, want about 100ms", d)
	}
	held.Unlock()
	lk, err := lockAdd(context.Background(), dir, "c1", 100*time.Millisecond)
	if err != nil {
		t.Fatalf("free lock: %v", err)
	}
	lk.Unlock()
}
