package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/testutil"
)

// localcluster runs hack/localcluster with args and returns stdout.
// stderr goes to the test log.
func localcluster(t testing.TB, ctx context.Context, args ...string) (string, error) {
	t.Helper()
	root := testutil.RepoRoot()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "localcluster"), args...)
	cmd.Dir = root
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if s := strings.TrimSpace(stderr.String()); s != "" {
		t.Logf("hack/localcluster %s:\n%s", strings.Join(args, " "), s)
	}
	if err != nil {
		return stdout.String(), fmt.Errorf("hack/localcluster %s: %w", strings.Join(args, " "), err)
	}
	return stdout.String(), nil
}

// upFresh brings a cluster up with args (tearing down whatever ran
// before) and, unless WEFT_E2E_KEEP, down again at the end, checking the
// host is as it was.
func upFresh(t *testing.T, ctx context.Context, args ...string) {
	t.Helper()
	if !keep() {
		if _, err := localcluster(t, ctx, "down"); err != nil {
			t.Fatalf("pre-clean: %v", err)
		}
		before := snapshot(t)
		t.Cleanup(func() {
			if _, err := localcluster(t, context.Background(), "down"); err != nil {
				t.Errorf("down: %v", err)
			}
			assertHostRestored(t, before, snapshot(t))
		})
	}
	if _, err := localcluster(t, ctx, args...); err != nil {
		t.Fatalf("up: %v", err)
	}
}

// adminClient returns a client with the cluster's admin kubeconfig.
func adminClient(t testing.TB) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(testutil.RepoRoot(), ".localcluster", "kubeconfig"))
	if err != nil {
		t.Fatalf("load admin kubeconfig: %v", err)
	}
	cfg.QPS, cfg.Burst = 50, 100
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	return c
}

// keep reports whether WEFT_E2E_KEEP asks to reuse a running cluster and
// leave it up afterwards.
func keep() bool { v := os.Getenv("WEFT_E2E_KEEP"); return v != "" && v != "0" }

// hostState is what the cluster must leave exactly as it found it.
type hostState struct {
	Netns        []string // /run/netns entries
	Links        []string // root-namespace link names
	Mounts       []string // mount points of the host mount namespace
	Procs        []string // "pid/comm" of the cluster's processes
	RunNetnsMnt  bool     // /run/netns is a mount point
	NodePathsSet []string // which of the node production paths exist
}

// clusterProc reports whether process pid belongs to the local cluster of
// this checkout: started by hack/localcluster (its marker variable names our
// state dir), or a pod process the node emulator runs on a cluster node.
func clusterProc(pid string) bool {
	env, err := os.ReadFile(filepath.Join("/proc", pid, "environ"))
	if err != nil {
		return false
	}
	stateDir := filepath.Join(testutil.RepoRoot(), ".localcluster")
	vars := map[string]string{}
	for _, kv := range bytes.Split(env, []byte{0}) {
		k, v, _ := strings.Cut(string(kv), "=")
		vars[k] = v
	}
	if vars["WEFT_LOCALCLUSTER"] == stateDir {
		return true
	}
	return vars["KUBERNETES_SERVICE_HOST"] == "172.18.0.2" && strings.HasPrefix(vars["HOSTNAME"], "wl-node")
}

var nodePaths = []string{"/etc/cni", "/etc/cni/net.d", "/opt/cni", "/opt/cni/bin", "/var/lib/cni", "/run/weft",
	"/run/secrets", "/run/secrets/kubernetes.io"}

func snapshot(t testing.TB) hostState {
	t.Helper()
	var s hostState
	if entries, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range entries {
			s.Netns = append(s.Netns, e.Name())
		}
	}
	out, err := exec.Command("ip", "-o", "link", "show").Output()
	if err != nil {
		t.Fatalf("ip link: %v", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 {
			name, _, _ := strings.Cut(strings.TrimSuffix(f[1], ":"), "@")
			s.Links = append(s.Links, name)
		}
	}
	mi, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatalf("mountinfo: %v", err)
	}
	sc := bufio.NewScanner(mi)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) > 4 {
			s.Mounts = append(s.Mounts, f[4])
			if f[4] == "/run/netns" {
				s.RunNetnsMnt = true
			}
		}
	}
	mi.Close()
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if !clusterProc(p.Name()) {
			continue
		}
		comm, _ := os.ReadFile(filepath.Join("/proc", p.Name(), "comm"))
		s.Procs = append(s.Procs, p.Name()+"/"+strings.TrimSpace(string(comm)))
	}
	for _, p := range nodePaths {
		if _, err := os.Lstat(p); err == nil {
			s.NodePathsSet = append(s.NodePathsSet, p)
		}
	}
	for _, l := range [][]string{s.Netns, s.Links, s.Mounts, s.Procs} {
		sort.Strings(l)
	}
	return s
}

// diff returns entries added and removed between two sorted lists.
func diff(before, after []string) (added, removed []string) {
	count := map[string]int{}
	for _, b := range before {
		count[b]++
	}
	for _, a := range after {
		count[a]--
	}
	for k, v := range count {
		for ; v < 0; v++ {
			added = append(added, k)
		}
		for ; v > 0; v-- {
			removed = append(removed, k)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	return added, removed
}

// ours reports whether a netns, link or mount name belongs to the cluster.
func ours(name string) bool {
	stateDir := filepath.Join(testutil.RepoRoot(), ".localcluster")
	base := filepath.Base(name)
	if strings.HasPrefix(base, "wl-") || strings.HasPrefix(base, "wlp-") || strings.HasPrefix(name, stateDir) {
		return true
	}
	for _, p := range nodePaths {
		if name == p || strings.HasPrefix(name, p+"/") {
			return true
		}
	}
	return false
}

// assertHostRestored fails on every difference the cluster could have
// caused. Differences in other names can only come from other test
// packages running at the same time; they are logged, not failed on.
func assertHostRestored(t testing.TB, before, after hostState) {
	t.Helper()
	check := func(what string, b, a []string) {
		added, removed := diff(b, a)
		for _, x := range added {
			if ours(x) {
				t.Errorf("%s left behind: %s", what, x)
			} else {
				t.Logf("%s %s appeared meanwhile (not the cluster's: another test package?)", what, x)
			}
		}
		for _, x := range removed {
			if ours(x) {
				t.Errorf("%s %s existed before and is gone", what, x)
			} else {
				t.Logf("%s %s disappeared meanwhile (not the cluster's)", what, x)
			}
		}
	}
	check("netns", before.Netns, after.Netns)
	check("link", before.Links, after.Links)
	check("mount", before.Mounts, after.Mounts)
	if added, removed := diff(before.Procs, after.Procs); len(added)+len(removed) > 0 {
		t.Errorf("cluster processes differ: added %v, removed %v", added, removed)
	}
	if added, removed := diff(before.NodePathsSet, after.NodePathsSet); len(added)+len(removed) > 0 {
		t.Errorf("node paths on the host differ: added %v, removed %v", added, removed)
	}
	if before.RunNetnsMnt != after.RunNetnsMnt {
		others := 0
		for _, n := range after.Netns {
			if !ours(n) {
				others++
			}
		}
		if others == 0 {
			t.Errorf("/run/netns mount point: before %v, after %v", before.RunNetnsMnt, after.RunNetnsMnt)
		} else {
			t.Logf("/run/netns mount state changed (before %v, after %v) with %d foreign namespaces present", before.RunNetnsMnt, after.RunNetnsMnt, others)
		}
	}
}

func waitFor(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	var lastErr error
	for time.Now().Before(deadline) {
		ok, err := cond()
		if ok {
			return nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	if lastErr != nil {
		return fmt.Errorf("timed out after %s: %w", timeout, lastErr)
	}
	return fmt.Errorf("timed out after %s", timeout)
}
