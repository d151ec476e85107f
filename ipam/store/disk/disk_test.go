package disk

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/ipam/store"
)

func listDir(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func addOne(ip string) store.UpdateFunc {
	return func(s *store.State) (bool, error) {
		s.Allocations = append(s.Allocations, store.Allocation{IP: netip.MustParseAddr(ip), ContainerID: "c-" + ip, IfName: "eth0"})
		s.SetLast(0, netip.MustParseAddr(ip))
		return true, nil
	}
}

func TestUpdateViewRoundTripAndLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net")
	s := New(dir, Options{})
	ctx := context.Background()
	if err := s.Update(ctx, addOne("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	if err := s.Update(ctx, addOne("10.0.0.3")); err != nil {
		t.Fatal(err)
	}
	// A fresh store on the same directory (a restarted plugin) sees it all.
	err := New(dir, Options{}).View(ctx, func(st *store.State) error {
		if len(st.Allocations) != 2 || st.Last(0).String() != "10.0.0.3" || st.Allocations[1].ContainerID != "c-10.0.0.3" {
			return fmt.Errorf("state %+v", st)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{Slot0, Slot1}) {
		t.Errorf("directory holds %v, want only %v (no lock or temp files)", got, SlotFiles())
	}
}

func TestNoChangeCreatesNothing(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net")
	s := New(dir, Options{})
	calls := 0
	err := s.Update(context.Background(), func(st *store.State) (bool, error) {
		calls++
		return st.Release(func(store.Allocation) bool { return true }) > 0, nil
	})
	if err != nil || calls != 1 {
		t.Fatalf("err %v calls %d", err, calls)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a no-op update created %s", dir)
	}
	if err := s.View(context.Background(), func(st *store.State) error {
		if len(st.Allocations) != 0 {
			return errors.New("not empty")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func TestFailedUpdateWritesNothing(t *testing.T) {
	dir := t.TempDir()
	s := New(dir, Options{Sync: true})
	ctx := context.Background()
	if err := s.Update(ctx, addOne("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	err := s.Update(ctx, func(st *store.State) (bool, error) {
		st.Allocations = nil
		return true, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("got %v", err)
	}
	_ = s.View(ctx, func(st *store.State) error {
		if len(st.Allocations) != 1 {
			t.Errorf("failed update leaked: %+v", st.Allocations)
		}
		return nil
	})
}

func TestConcurrentUpdatesSerialise(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net")
	ctx := context.Background()
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			// Each goroutine uses its own Store value, as separate plugin
			// invocations would: exclusion comes from flock alone.
			s := New(dir, Options{})
			errs <- s.Update(ctx, func(st *store.State) (bool, error) {
				st.Allocations = append(st.Allocations, store.Allocation{
					IP:          netip.AddrFrom4([4]byte{10, 0, byte(i / 250), byte(i%250 + 1)}),
					ContainerID: fmt.Sprint("c", i), IfName: "eth0",
				})
				return true, nil
			})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	_ = New(dir, Options{}).View(ctx, func(st *store.State) error {
		if len(st.Allocations) != n {
			t.Errorf("lost updates: %d of %d recorded", len(st.Allocations), n)
		}
		return nil
	})
	if got := listDir(t, dir); !slices.Equal(got, []string{Slot0, Slot1}) {
		t.Errorf("directory holds %v", got)
	}
}

func TestLockWaitHonoursContext(t *testing.T) {
	dir := t.TempDir()
	s := New(dir, Options{})
	holder, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(holder) })
	if err := unix.Flock(holder, unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	ran := false
	err = s.Update(ctx, func(*store.State) (bool, error) { ran = true; return true, nil })
	if !errors.Is(err, context.DeadlineExceeded) || ran {
		t.Fatalf("want deadline error without running fn, got %v ran=%v", err, ran)
	}
	// Shared readers wait as well.
	ctx2, cancel2 := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel2()
	if err := s.View(ctx2, func(*store.State) error { return nil }); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("View under exclusive lock: %v", err)
	}
	// Once the holder lets go, the abandoned waiter must not keep the lock.
	unix.Close(holder)
	ctx3, cancel3 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel3()
	if err := s.Update(ctx3, addOne("10.0.0.9")); err != nil {
		t.Fatalf("update after release: %v", err)
	}
}

func TestCorruptStateMovedAside(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, Slot0), []byte("weft-ipam 1 7\n10.0"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, Slot1), []byte("garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(dir, Options{})
	// A shared reader sees an empty state and leaves the files alone.
	if err := s.View(context.Background(), func(st *store.State) error {
		if len(st.Allocations) != 0 {
			t.Errorf("state from garbage: %+v", st)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{Slot0, Slot1}) {
		t.Fatalf("a reader changed the directory: %v", got)
	}
	if err := s.Update(context.Background(), addOne("10.0.0.2")); err != nil {
		t.Fatal(err)
	}
	names := listDir(t, dir)
	aside := 0
	for _, n := range names {
		if strings.Contains(n, ".corrupt-") {
			aside++
		}
	}
	if aside != 2 || !slices.Contains(names, Slot1) {
		t.Errorf("directory %v: want both bad slots kept aside and a fresh slot", names)
	}
	_ = s.View(context.Background(), func(st *store.State) error {
		if len(st.Allocations) != 1 {
			t.Errorf("state %+v", st)
		}
		return nil
	})
}

func TestTornSlotFallsBackToPrevious(t *testing.T) {
	dir := t.TempDir()
	s := New(dir, Options{})
	ctx := context.Background()
	for _, ip := range []string{"10.0.0.2", "10.0.0.3", "10.0.0.4"} {
		if err := s.Update(ctx, addOne(ip)); err != nil {
			t.Fatal(err)
		}
	}
	// Generation 3 lives in slot 1, generation 2 in slot 0. Tear slot 1 at
	// every possible length: the reader must see generation 2 (two
	// allocations) each time, and the next write must succeed.
	full, err := os.ReadFile(filepath.Join(dir, Slot1))
	if err != nil {
		t.Fatal(err)
	}
	old, err := os.ReadFile(filepath.Join(dir, Slot0))
	if err != nil {
		t.Fatal(err)
	}
	for cut := 0; cut < len(full); cut++ {
		// New prefix over the old slot content's tail, as an in-place
		// overwrite killed midway leaves it.
		torn := append([]byte{}, full[:cut]...)
		if cut < len(old) {
			torn = append(torn, old[cut:]...)
		}
		sl, err := decode(torn)
		if err == nil && len(sl.st.Allocations) == 3 {
			continue // the torn copy happens to equal the full one
		}
		if err := os.WriteFile(filepath.Join(dir, Slot1), torn, 0o644); err != nil {
			t.Fatal(err)
		}
		_ = s.View(ctx, func(st *store.State) error {
			if len(st.Allocations) != 2 {
				t.Fatalf("cut %d: read %d allocations, want the previous generation's 2", cut, len(st.Allocations))
			}
			return nil
		})
	}
	if err := s.Update(ctx, addOne("10.0.0.9")); err != nil {
		t.Fatal(err)
	}
	_ = s.View(ctx, func(st *store.State) error {
		if len(st.Allocations) != 3 || st.Allocations[2].IP.String() != "10.0.0.9" {
			t.Errorf("after rewrite: %+v", st.Allocations)
		}
		return nil
	})
}

func TestFormatRoundTrip(t *testing.T) {
	st := &store.State{}
	st.SetLast(1, netip.MustParseAddr("fd00::9"))
	st.Allocations = []store.Allocation{
		{IP: netip.MustParseAddr("10.0.0.2"), ContainerID: "abc", IfName: "eth0"},
		{IP: netip.MustParseAddr("fd00::9"), ContainerID: "abc", IfName: "eth0"},
	}
	sl, err := decode(encode(slot{st: st, gen: 42, boot: "b00t"}))
	if err != nil || sl.gen != 42 || sl.boot != "b00t" {
		t.Fatalf("decode: %v %+v", err, sl)
	}
	got := sl.st
	if !slices.Equal(got.Allocations, st.Allocations) || got.Last(1) != st.Last(1) || got.Last(0).IsValid() {
		t.Errorf("round trip: %+v", got)
	}
	if headerGen(encode(slot{st: st, gen: 7})) != 7 || headerGen([]byte("junk")) != 0 {
		t.Error("headerGen")
	}
	empty, err := decode(encode(slot{st: &store.State{}, gen: 1}))
	if err != nil || len(empty.st.Allocations) != 0 || empty.boot != "" {
		t.Errorf("empty: %v %+v", err, empty)
	}
	// Every single-byte corruption is detected.
	data := encode(slot{st: st, gen: 3, boot: "b"})
	for i := range data {
		bad := slices.Clone(data)
		bad[i] ^= 0x20
		if sl, err := decode(bad); err == nil && (sl.gen != 3 || !slices.Equal(sl.st.Allocations, st.Allocations)) {
			t.Errorf("flipping byte %d went unnoticed: %+v", i, sl)
		}
	}
}

func TestImportHostLocal(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"10.0.0.5":           "ctr-a\r\neth0",
		"10.0.0.6":           "ctr-b\r\nnet1",
		"10.0.0.7":           "ctr-old", // pre-ifname format
		"fd00::5":            "ctr-a\r\neth0",
		"last_reserved_ip.0": "10.0.0.7",
		"last_reserved_ip.1": "fd00::5",
		"lock":               "",
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	s := New(dir, Options{})
	var seen []string
	err := s.Update(context.Background(), func(st *store.State) (bool, error) {
		for _, a := range st.Allocations {
			seen = append(seen, a.IP.String()+"="+a.ContainerID+"/"+a.IfName)
		}
		if st.Last(0).String() != "10.0.0.7" || st.Last(1).String() != "fd00::5" {
			return false, fmt.Errorf("last reserved %v", st.LastReserved)
		}
		return false, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(seen)
	want := []string{"10.0.0.5=ctr-a/eth0", "10.0.0.6=ctr-b/net1", "10.0.0.7=ctr-old/eth0", "fd00::5=ctr-a/eth0"}
	if !slices.Equal(seen, want) {
		t.Fatalf("imported %v, want %v", seen, want)
	}
	// The import is persisted and host-local's files are gone; its lock
	// file is not ours and stays.
	if got := listDir(t, dir); !slices.Equal(got, []string{"lock", Slot1}) {
		t.Errorf("directory after import: %v", got)
	}
}

func TestRebootReleasesEarlierAllocations(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	before := New(dir, Options{BootID: "boot-1"})
	for _, ip := range []string{"10.0.0.2", "10.0.0.3"} {
		if err := before.Update(ctx, addOne(ip)); err != nil {
			t.Fatal(err)
		}
	}
	// Same boot, new process: everything is still there.
	_ = New(dir, Options{BootID: "boot-1"}).View(ctx, func(st *store.State) error {
		if len(st.Allocations) != 2 {
			t.Errorf("same boot lost allocations: %+v", st.Allocations)
		}
		return nil
	})
	after := New(dir, Options{BootID: "boot-2"})
	_ = after.View(ctx, func(st *store.State) error {
		if len(st.Allocations) != 0 || st.Last(0).String() != "10.0.0.3" {
			t.Errorf("after reboot: %+v", st)
		}
		return nil
	})
	// A no-op update after the reboot persists the release.
	if err := after.Update(ctx, func(*store.State) (bool, error) { return false, nil }); err != nil {
		t.Fatal(err)
	}
	var newest slot
	for _, name := range SlotFiles() {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if sl, err := decode(data); err == nil && sl.gen > newest.gen {
			newest = sl
		}
	}
	if newest.boot != "boot-2" || len(newest.st.Allocations) != 0 || newest.gen != 3 {
		t.Errorf("release not persisted: gen %d boot %q allocations %+v", newest.gen, newest.boot, newest.st)
	}
	if err := after.Update(ctx, addOne("10.0.0.4")); err != nil {
		t.Fatal(err)
	}
	_ = New(dir, Options{BootID: "boot-2"}).View(ctx, func(st *store.State) error {
		if len(st.Allocations) != 1 || st.Allocations[0].IP.String() != "10.0.0.4" {
			t.Errorf("state %+v", st.Allocations)
		}
		return nil
	})
}

// A killed first write leaves a torn slot 1 and no slot 0: that is an empty
// store, not damage to move aside, and the next write replaces the slot.
func TestTornFirstWriteIsEmpty(t *testing.T) {
	dir := t.TempDir()
	full := encode(slot{st: &store.State{Allocations: []store.Allocation{{IP: netip.MustParseAddr("10.0.0.2"), ContainerID: "c", IfName: "eth0"}}}, gen: 1})
	if err := os.WriteFile(filepath.Join(dir, Slot1), full[:len(full)-9], 0o644); err != nil {
		t.Fatal(err)
	}
	s := New(dir, Options{})
	if err := s.Update(context.Background(), addOne("10.0.0.3")); err != nil {
		t.Fatal(err)
	}
	if got := listDir(t, dir); !slices.Equal(got, []string{Slot1}) {
		t.Fatalf("directory %v, want only %s", got, Slot1)
	}
	_ = s.View(context.Background(), func(st *store.State) error {
		if len(st.Allocations) != 1 || st.Allocations[0].IP.String() != "10.0.0.3" {
			t.Errorf("state %+v", st.Allocations)
		}
		return nil
	})
}
