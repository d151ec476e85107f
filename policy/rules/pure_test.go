package rules_test

import (
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// The pure renderer and tracer must not do I/O, so that every outcome of
// a policy can be computed and tested without a kernel, an API server or
// a clock. TestRendererIsPure enforces it on the import graph.

const module = "github.com/weftnet/weft/"

// forbiddenAnywhere may not appear among the transitive dependencies:
// packages whose only purpose is talking to the kernel, a process, a
// server or the file system. (The standard library's os, net and net/http
// do appear transitively, through the Kubernetes API types'
// apimachinery; what matters is that no Weft package of the closure uses
// them, see forbiddenDirect.)
var forbiddenAnywhere = []string{
	"os/exec", "os/signal", "plugin",
	"golang.org/x/sys/unix",
	"k8s.io/client-go",
	"github.com/prometheus/",
	"github.com/vishvananda/netlink", "github.com/vishvananda/netns",
	"github.com/fsnotify/",
	"github.com/containernetworking/",
	"github.com/coreos/go-iptables",
}

// forbiddenDirect may not be imported by any Weft package of the closure.
var forbiddenDirect = []string{
	"os", "os/exec", "os/signal", "syscall", "io/fs", "io/ioutil", "path/filepath",
	"net", "net/http", "net/rpc", "log", "crypto/rand", "math/rand", "math/rand/v2",
	"time", "unsafe", "runtime",
}

// pureWeft are the only Weft packages the renderer may depend on.
var pureWeft = []string{
	module + "policy/rules",
	module + "internal/endpoint/record",
	module + "internal/iptables/syntax",
	module + "internal/names", // constants only
}

type listed struct {
	ImportPath string
	Imports    []string
	Standard   bool
}

func TestRendererIsPure(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("no go tool on PATH: cannot list the import graph")
	}
	for _, v := range purityViolations(t, module+"policy/rules") {
		t.Error(v)
	}
}

// purityViolations lists why pkg (and its dependency closure) is not pure.
func purityViolations(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports,Standard", pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	var bad []string
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for {
		var p listed
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		for _, f := range forbiddenAnywhere {
			if p.ImportPath == f || strings.HasPrefix(p.ImportPath, strings.TrimSuffix(f, "/")+"/") || strings.HasSuffix(f, "/") && strings.HasPrefix(p.ImportPath, f) {
				bad = append(bad, pkg+" depends on "+p.ImportPath)
			}
		}
		if !strings.HasPrefix(p.ImportPath, module) {
			continue
		}
		if !contains(pureWeft, p.ImportPath) {
			bad = append(bad, pkg+" depends on "+p.ImportPath+", which is not one of the pure Weft packages")
		}
		for _, imp := range p.Imports {
			if contains(forbiddenDirect, imp) {
				bad = append(bad, p.ImportPath+" imports "+imp)
			}
		}
	}
	return bad
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
