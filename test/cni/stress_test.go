package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
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
// the allocation is stored. It appends "ipam-rc=<weft-ipam's exit code>
// killing=<pid>" to the returned marker file just before the kill (after
// it, the wrapper may not run again before libcni returns): with weft's
// SIGKILL exit that shows the kill landed there and not elsewhere.
func crashWrapper(t *testing.T) (dir, marker string) {
	dir = t.TempDir()
	marker = filepath.Join(dir, "killed")
	script := "#!/bin/sh\nout=$(" + filepath.Join(testutil.BinDir(t), "weft-ipam") + ")\nrc=$?\n" +
		"if [ \"$CNI_COMMAND\" = ADD ]; then echo \"ipam-rc=$rc killing=$PPID\" >> " + marker + "; kill -9 $PPID; fi\n" +
		"printf '%s' \"$out\"\nexit $rc\n"
	if err := os.WriteFile(filepath.Join(dir, "weft-ipam-crash"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, marker
}

// sigExec runs plugins as libcni's RawExec does and remembers how the last
// run of each plugin ended, so a test can tell a SIGKILL from any other
// failure (an error of the plugin's own, or a deadline that passed before
// the process started).
type sigExec struct {
	invoke.RawExec
	version.PluginDecoder
	mu     sync.Mutex
	killed map[string]bool // plugin name -> last run ended by SIGKILL
}

func (x *sigExec) ExecPlugin(ctx context.Context, path string, stdin []byte, env []string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	c := exec.CommandContext(ctx, path)
	c.Env, c.Stdin, c.Stdout, c.Stderr = env, bytes.NewReader(stdin), &stdout, &stderr
	err := c.Run()
	killed := false
	if c.ProcessState != nil { // nil: the deadline passed before the start
		ws, ok := c.ProcessState.Sys().(syscall.WaitStatus)
		killed = ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
	}
	x.mu.Lock()
	x.killed[filepath.Base(path)] = killed
	x.mu.Unlock()
	if err == nil {
		return stdout.Bytes(), nil
	}
	var te types.Error
	if json.Unmarshal(stdout.Bytes(), &te) == nil && te.Msg != "" {
		return nil, &te
	}
	return nil, fmt.Errorf("plugin %s: %w (stderr %q)", filepath.Base(path), err, stderr.String())
}

// lastKilled reports whether plugin's last run ended by SIGKILL.
func (x *sigExec) lastKilled(plugin string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	return x.killed[plugin]
}

// watchKills makes e's libcni run plugins through a sigExec.
func (e *env) watchKills() *sigExec {
	x := &sigExec{killed: map[string]bool{}}
	e.cni = libcni.NewCNIConfigWithCacheDir(e.paths, e.cacheDir, x)
	return x
}

// An ADD killed right after IPAM stored the allocation leaves nothing a
// later DEL (first subtest) or GC (second) does not clean.
func TestCrashAfterIPAM(t *testing.T) {
	for _, cleanup := range []string{"del", "gc"} {
		t.Run(cleanup, func(t *testing.T) {
			dir, marker := crashWrapper(t)
			e := newEnv(t, dir)
			x := e.watchKills()
			l := e.confList("1.1.0", e.weftConf("weft-ipam-crash"))
			p := e.newPod("crash")
			if _, err := e.add(l, p); err == nil || !x.lastKilled("weft") {
				t.Fatalf("ADD: %v, want weft killed by SIGKILL", err)
			}
			b, rerr := os.ReadFile(marker)
			if rerr != nil || !strings.HasPrefix(string(b), "ipam-rc=0 killing=") || strings.Count(string(b), "\n") != 1 {
				t.Fatalf("marker %q (%v): the kill did not land right after a successful weft-ipam ADD", b, rerr)
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
// Every failed ADD must be such a kill (any other error fails the test),
// and some kills must have landed mid-ADD, leaving an allocation or a veth
// for the cleanup to prove itself on.
func TestRandomKillDuringAdd(t *testing.T) {
	for _, cleanup := range []string{"del", "gc"} {
		t.Run(cleanup, func(t *testing.T) {
			e := newEnv(t)
			x := e.watchKills()
			// weft alone, so every kill lands in weft.
			l := e.confList("1.1.0", e.weftConf("weft-ipam"))
			l.Plugins = l.Plugins[:1]
			var pods []*pod
			killed, midway := 0, 0
			for i := range 30 {
				p := e.newPod("k")
				pods = append(pods, p)
				// 0.3..8 ms: from process start to the end of ADD.
				d := time.Duration(300+rand.IntN(7700)) * time.Microsecond
				if i%10 == 9 {
					d = 10 * time.Second // a few that complete
				}
				before := len(e.allocations()) + len(e.hostVeths())
				var err error
				e.in(func() error {
					ctx, cancel := context.WithTimeout(context.Background(), d)
					defer cancel()
					_, err = e.cni.AddNetworkList(ctx, l, p.rt)
					return nil
				})
				switch {
				case x.lastKilled("weft"):
					killed++
					if len(e.allocations())+len(e.hostVeths()) > before {
						midway++
					}
				case err != nil && !errors.Is(err, context.DeadlineExceeded):
					// DeadlineExceeded: the deadline passed before weft
					// started, so nothing was killed.
					t.Fatalf("ADD %d failed, and not by the kill: %v", i, err)
				}
			}
			t.Logf("%d of %d ADDs killed, %d of them midway; %d allocations and %d veths before cleanup",
				killed, len(pods), midway, len(e.allocations()), len(e.hostVeths()))
			if midway == 0 {
				t.Fatal("no kill landed midway through an ADD; the test proves nothing")
			}
			e.cleanupAll(l, pods, cleanup)
		})
	}
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
