// Package testutil holds helpers shared by the tests: root checks,
// throwaway network namespaces, locating the binaries under test,
// polling for a condition, and a sequence-numbered UDP stream.
package testutil

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
)

// RequireRoot skips the test, saying why, unless it runs as root. The
// privileged tier is the only one allowed to skip, and only for this.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root (network namespaces, links); run as root to include it")
	}
}

// NewNS creates a throwaway network namespace and removes it when the test
// ends, whether it passed or not.
func NewNS(t testing.TB) ns.NetNS {
	t.Helper()
	RequireRoot(t)
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("create netns: %v", err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// RepoRoot returns the repository root (the directory holding go.mod).
func RepoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

var (
	buildOnce sync.Once
	buildDir  string
	buildErr  error
)

// BinDir returns a directory holding weft's binaries (weft, weft-ipam, ...).
// When WEFT_BIN_DIR is set (make test sets it to bin/) that directory is
// used as is; otherwise the binaries are built once per test process into a
// temporary directory, which outlives the process (go test has no hook to
// remove it from here): run through make test, or set WEFT_BIN_DIR, to
// avoid leaving /tmp/weft-bin-* behind.
func BinDir(t testing.TB) string {
	t.Helper()
	if d := os.Getenv("WEFT_BIN_DIR"); d != "" {
		return d
	}
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "weft-bin-")
		if buildErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-o", buildDir+"/", "./plugins/...", "./cmd/...")
		cmd.Dir = RepoRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("build binaries: %v", buildErr)
	}
	return buildDir
}

// RefPluginDir returns the directory with the reference CNI plugins at
// v1.9.1 (bridge, host-local, portmap, bandwidth, loopback). make test
// installs them into bin/ref and sets WEFT_REF_CNI_DIR; without it the test
// fails with a hint rather than silently skipping.
func RefPluginDir(t testing.TB) string {
	t.Helper()
	d := os.Getenv("WEFT_REF_CNI_DIR")
	if d == "" {
		d = filepath.Join(RepoRoot(), "bin", "ref")
	}
	for _, p := range []string{"portmap", "bandwidth", "bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(d, p)); err != nil {
			t.Fatalf("reference CNI plugin %s missing in %s: run `make ref-plugins` (or make test)", p, d)
		}
	}
	return d
}

// Eventually polls cond every 10 ms for up to 10 s (a liveness bound, not
// a timing assertion) and fails the test naming what never happened.
func Eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
