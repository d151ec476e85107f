package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/testutil"
)

// recordsRebuilt (part of TestNetworkPolicy): node 2 loses every endpoint
// record, as after an upgrade from a weftd without policy or a wiped
// /run/weft, and its weftd restarts. The new weftd rebuilds the records
// from the IPAM store, the host veth names and the Pods on the node before
// its first sync, so traffic keeps flowing and policy still holds (a
// default deny in x) instead of every pod on the node hitting the
// unknown-endpoint DROP.
func (e *polEnv) recordsRebuilt() {
	t := e.t
	node := e.nodes[1]
	dir := filepath.Join(testutil.RepoRoot(), ".localcluster", "nodes", node, "run-weft", "endpoints")
	records := func() []string { m, _ := filepath.Glob(filepath.Join(dir, "*.json")); return m }
	before := records()
	// One record per pod network attachment on the node: the test's three
	// pods, plus any add-on pod (CoreDNS) the scheduler put there.
	pods, err := e.client.CoreV1().Pods("").List(e.ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + node})
	if err != nil {
		t.Fatal(err)
	}
	want := 0
	for _, p := range pods.Items {
		if !p.Spec.HostNetwork && p.DeletionTimestamp == nil {
			want++
		}
	}
	if len(before) != want || want < 3 {
		t.Fatalf("%s: %d endpoint records in %s, want %d (pods on the node, at least the test's 3)", node, len(before), dir, want)
	}
	e.apply(netpol("x", "deny", nil, ingress))
	denyX := func(f, to pp, s probeSpec) bool { return to.ns != "x" }
	e.truth("default deny in x, before the records are lost", []probeSpec{tcp80}, denyX)

	pid, err := weftdPID(node)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range before {
		if err := os.Remove(f); err != nil {
			t.Fatal(err)
		}
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill weftd %d on %s: %v", pid, node, err)
	}
	t.Logf("removed %d endpoint records on %s and killed its weftd (pid %d)", len(before), node, pid)
	n, err := e.client.CoreV1().Nodes().Get(e.ctx, node, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = waitFor(e.ctx, 3*time.Minute, func() (bool, error) {
		now, err := weftdPID(node)
		if err != nil || now == pid {
			return false, fmt.Errorf("weftd not restarted (%v)", err)
		}
		code, body, err := readyz(node, internalIP(n))
		return code == 200, fmt.Errorf("restarted weftd not ready: %d %s %v", code, body, err)
	})
	if err != nil {
		t.Fatal(err)
	}
	e.truth("default deny in x, after weftd restarted without records", []probeSpec{tcp80, udp80}, denyX)
	if got := records(); len(got) != len(before) {
		t.Errorf("%s: %d endpoint records after the restart, want %d", node, len(got), len(before))
	}
	e.deleteAll()
}
