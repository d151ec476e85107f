package endpoint

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// The ADD lock: held, Adding says so and a second taker is refused (or
// waits); unlocked, the file is gone and the next taker gets it. List
// never sees the lock directory; a container ID that is not one (a path)
// is refused.
func TestAddLock(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	if Adding(dir, "c1") {
		t.Fatal("Adding before any lock")
	}
	l, err := LockAdd(ctx, dir, "c1")
	if err != nil {
		t.Fatal(err)
	}
	if !Adding(dir, "c1") || Adding(dir, "c2") {
		t.Errorf("Adding(c1)=%v Adding(c2)=%v with c1 locked", Adding(dir, "c1"), Adding(dir, "c2"))
	}
	if _, err := TryLockAdd(dir, "c1"); !IsBusy(err) {
		t.Errorf("TryLockAdd of a held lock: %v, want busy", err)
	}
	if recs, err := List(dir); err != nil || len(recs) != 0 {
		t.Errorf("List with a lock held: %v %v", recs, err)
	}
	got := make(chan error, 1)
	go func() {
		l2, err := LockAdd(ctx, dir, "c1")
		l2.Unlock()
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("LockAdd did not wait for the holder: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	l.Unlock()
	if err := <-got; err != nil {
		t.Fatalf("LockAdd after the holder unlocked: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, addsDir, "c1")); !os.IsNotExist(err) {
		t.Errorf("lock file left behind: %v", err)
	}
	if Adding(dir, "c1") {
		t.Error("Adding after unlock")
	}
	tctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	l3, _ := TryLockAdd(dir, "c1")
	if _, err := LockAdd(tctx, dir, "c1"); err == nil {
		t.Error("LockAdd of a held lock returned before its context ended")
	}
	l3.Unlock()
	if _, err := TryLockAdd(dir, "../../etc/x"); err == nil || IsBusy(err) {
		t.Errorf("TryLockAdd of a path: %v, want refused", err)
	}
}
