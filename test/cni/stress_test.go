package cni

import (
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/testutil"
)

// 100 ADDs started at once get 100 distinct addresses; 100 DELs at once
// then leave no allocation and no veth.
func TestConcurrent100(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", e.weftConf("weft-ipam"))
	const n = 100
	pods := make([]*pod, n)
	for i := range pods {
		pods[i] = e.newPod("c")
	}
	run := func(op func(p *pod) error) []error {
		errs := make([]error, n)
		var wg sync.WaitGroup
		for i, p := range pods {
			wg.Go(func() { errs[i] = e.inErr(func() error { return op(p) }) })
		}
		wg.Wait()
		return errs
	}
	var (
		mu        sync.Mutex
		resultIPs = map[string]bool{}
	)
	errs := run(func(p *pod) error {
		r, err := e.cni.AddNetworkList(context.Background(), l, p.rt)
		if err != nil {
			return err
		}
		res, err := current.NewResultFromResult(r)
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for _, ip := range res.IPs {
			resultIPs[ip.Address.IP.String()] = true
		}
		return nil
	})
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent ADD %d: %v", i, err)
		}
	}
	if len(resultIPs) != n {
		t.Fatalf("%d distinct addresses in %d results", len(resultIPs), n)
	}
	al := e.allocations()
	seen := map[string]bool{}
	for _, a := range al {
		seen[a.IP.String()] = true
	}
	if len(al) != n || len(seen) != n {
		t.Fatalf("%d allocations, %d distinct addresses; want %d", len(al), len(seen), n)
	}
	if v := e.hostVeths(); len(v) != n {
		t.Fatalf("%d host veths, want %d", len(v), n)
	}
	for i, err := range run(func(p *pod) error { return e.cni.DelNetworkList(context.Background(), l, p.rt) }) {
		if err != nil {
			t.Fatalf("concurrent DEL %d: %v", i, err)
		}
	}
	if al := e.allocations(); len(al) != 0 {
		t.Fatalf("%d allocations left after DEL", len(al))
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Fatalf("veths left after DEL: %v", v)
	}
}

// crashWrapper writes an IPAM plugin "weft-ipam-crash" that runs the real
// weft-ipam and then SIGKILLs its parent (the weft plugin) on ADD, after
// the allocation is stored.
func crashWrapper(t *testing.T) string {
	dir := t.TempDir()
	script := "#!/bin/sh\nout=$(" + filepath.Join(testutil.BinDir(t), "weft-ipam") + ")\nrc=$?\n" +
		"if [ \"$CNI_COMMAND\" = ADD ]; then kill -9 $PPID; fi\nprintf '%s' \"$out\"\nexit $rc\n"
	if err := os.WriteFile(filepath.Join(dir, "weft-ipam-crash"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// An ADD killed right after IPAM stored the allocation leaves nothing a
// later DEL (first subtest) or GC (second) does not clean.
func TestCrashAfterIPAM(t *testing.T) {
	for _, cleanup := range []string{"del", "gc"} {
		t.Run(cleanup, func(t *testing.T) {
			e := newEnv(t, crashWrapper(t))
			l := e.confList("1.1.0", e.weftConf("weft-ipam-crash"))
			p := e.newPod("crash")
			if _, err := e.add(l, p); err == nil {
				t.Fatal("ADD succeeded although the plugin was killed")
			}
			if al := e.allocations(); len(al) != 1 {
				t.Fatalf("allocations after the killed ADD: %+v, want the one IPAM stored", al)
			}
			e.cleanupAll(l, []*pod{p}, cleanup)
		})
	}
}

// weft is SIGKILLed at random moments during ADD (libcni kills the plugin
// when the context expires); afterwards DEL or GC leaves nothing behind.
func TestRandomKillDuringAdd(t *testing.T) {
	for _, cleanup := range []string{"del", "gc"} {
		t.Run(cleanup, func(t *testing.T) {
			e := newEnv(t)
			// weft alone, so every kill lands in weft.
			l := e.confList("1.1.0", e.weftConf("weft-ipam"))
			l.Plugins = l.Plugins[:1]
			var pods []*pod
			killed, notStarted := 0, 0
			for i := range 30 {
				p := e.newPod("k")
				pods = append(pods, p)
				// 0.3..8 ms: from process start to the end of ADD.
				d := time.Duration(300+rand.IntN(7700)) * time.Microsecond
				if i%10 == 9 {
					d = 10 * time.Second // a few that complete
				}
				e.in(func() error {
					ctx, cancel := context.WithTimeout(context.Background(), d)
					defer cancel()
					_, err := e.cni.AddNetworkList(ctx, l, p.rt)
					switch addOutcome(err) {
					case addKilled:
						killed++
					case addNotStarted:
						notStarted++
					case addFailed:
						t.Errorf("ADD %d (deadline %v) failed, but not by the kill: %v", i, d, err)
					}
					return nil
				})
			}
			t.Logf("%d of %d ADDs killed inside weft, %d timed out before weft started; %d allocations and %d veths before cleanup",
				killed, len(pods), notStarted, len(e.allocations()), len(e.hostVeths()))
			if killed == 0 {
				t.Fatal("no ADD was killed while weft ran; the test proves nothing")
			}
			e.cleanupAll(l, pods, cleanup)
		})
	}
}

// How an ADD under a deadline ended.
const (
	addDone       = iota
	addKilled     // weft was running and got SIGKILL (libcni's exec on deadline)
	addNotStarted // the deadline passed before weft was started
	addFailed     // anything else: a real ADD failure, which the test must not count as a kill
)

// addOutcome classifies libcni's error for an ADD whose context may have
// expired. libcni reports the exec error inside the CNI error message
// ("netplugin failed with no error message: signal: killed"), so only text
// tells a kill that landed in weft from a deadline that passed before the
// process started, or from weft failing on its own. A kill after weft
// printed its result leaves libcni decoding that result as an error: code 0,
// no message (weft's own errors always carry a code).
func addOutcome(err error) int {
	var te *types.Error
	switch {
	case err == nil:
		return addDone
	case strings.Contains(err.Error(), "signal: killed"):
		return addKilled
	case errors.As(err, &te) && te.Code == 0 && te.Msg == "":
		return addKilled
	case strings.Contains(err.Error(), context.DeadlineExceeded.Error()):
		return addNotStarted
	}
	return addFailed
}

// cleanupAll removes pods by DEL each, or by GC with no valid attachment
// after libcni forgot them, and asserts nothing is left.
func (e *env) cleanupAll(l *libcni.NetworkConfigList, pods []*pod, how string) {
	e.t.Helper()
	switch how {
	case "del":
		for _, p := range pods {
			if err := e.del(l, p); err != nil {
				e.t.Fatalf("DEL after crash: %v", err)
			}
		}
	case "gc":
		e.clearCache()
		err := e.node.Do(func(ns.NetNS) error {
			return e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}})
		})
		if err != nil {
			e.t.Fatalf("GC after crash: %v", err)
		}
	}
	if al := e.allocations(); len(al) != 0 {
		e.t.Fatalf("allocations left after %s: %+v", how, al)
	}
	if v := e.hostVeths(); len(v) != 0 {
		e.t.Fatalf("veths left after %s: %v", how, v)
	}
}
