package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

// podNetns opens the network namespace of pod NS/NAME: it runs sleep there
// through `hack/localcluster exec` (nsenter execs in place, so the process
// ends up in the pod's netns) and opens /proc/PID/ns/net. The sleeper is
// stopped when the test ends.
func (e *polEnv) podNetns(p pp) ns.NetNS {
	t := e.t
	t.Helper()
	root := testutil.RepoRoot()
	cmd := exec.Command(filepath.Join(root, "hack", "localcluster"), "exec", e.ns(p.ns)+"/"+p.pod, "--", "sleep", "600")
	cmd.Dir = root
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	self, _ := os.Readlink("/proc/self/ns/net")
	path := fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
	err := waitFor(e.ctx, 20*time.Second, func() (bool, error) {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		cur, _ := os.Readlink(path)
		return strings.TrimSpace(string(comm)) == "sleep" && cur != "" && cur != self, fmt.Errorf("exec into %s not done", p)
	})
	if err != nil {
		t.Fatal(err)
	}
	h, err := ns.GetNS(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// checkSpoofing: with a policy that admits only x/a into x/b, a pod on b's
// node (y/b) and a pod on another node (x/c) forge UDP packets with x/a's
// source address through raw sockets, on the 5-tuple of a live a->b flow.
// None reaches b; a's own packets do; the anti-spoofing DROP on each
// attacker's node counts them. Called from TestNetworkPolicy (its cluster).
func (e *polEnv) checkSpoofing() {
	t := e.t
	t.Helper()
	xa, xb, local, remote := pp{"x", "a"}, pp{"x", "b"}, pp{"y", "b"}, pp{"x", "c"} // nodes 1, 2, 2, 3
	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b-from-a"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel("pod", "b"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("pod", "a")}}}}}})
	defer e.deleteAll()
	e.truth("spoofing: only x/a into x/b", []probeSpec{udp80}, func(f, to pp, s probeSpec) bool { return to != xb || f == xa })

	const port, sport = 9999, 40001
	nsOf := map[pp]ns.NetNS{}
	for _, p := range []pp{xa, xb, local, remote} {
		nsOf[p] = e.podNetns(p)
	}
	atB := testutil.ListenUDP(t, nsOf[xb], port)
	aIP, bIP := netip.MustParseAddr(e.ips[xa]), netip.MustParseAddr(e.ips[xb])
	before := map[int]int{2: e.spoofDrops(2), 3: e.spoofDrops(3)}
	// Positive control through the same raw path; it also opens the flow
	// in conntrack that the forged packets copy.
	err := waitFor(e.ctx, 15*time.Second, func() (bool, error) {
		if err := testutil.SendRawUDP(nsOf[xa], aIP, bIP, sport, port, "real"); err != nil {
			return false, err
		}
		time.Sleep(300 * time.Millisecond)
		return len(atB.Received("real ")) > 0, fmt.Errorf("x/a's own packet never reached x/b")
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		for _, attacker := range []pp{local, remote} {
			if err := testutil.SendRawUDP(nsOf[attacker], aIP, bIP, sport, port, "forged-by-"+attacker.String()); err != nil {
				t.Fatal(err)
			}
		}
	}
	time.Sleep(2 * time.Second)
	if got := atB.Received("forged-"); len(got) > 0 {
		t.Errorf("forged packets with x/a's source reached x/b: %v", got)
	}
	for node, n := range before {
		d := e.spoofDrops(node) - n
		if d < 3 {
			t.Errorf("node %d: spoofed-source DROP counted %d of the 3 forged packets", node, d)
		}
		t.Logf("spoofing: node %d dropped %d forged packets; x/b received %v", node, d, atB.Received(""))
	}
}

// spoofDrops is the packet counter of node i's anti-spoofing DROP rule
// (0 when there is none, as before the fix).
func (e *polEnv) spoofDrops(i int) int {
	n, err := spoofDropsIn(e.ctx, nodeNetns(i))
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// spoofDropsIn is the packet counter of the anti-spoofing DROP rule in the
// node namespace at path (0 when there is none).
func spoofDropsIn(ctx context.Context, path string) (int, error) {
	mode, err := iptables.Detect(ctx, path)
	if err != nil {
		return 0, err
	}
	out, _ := exec.CommandContext(ctx, "nsenter", "--net="+path, "--", "iptables-"+string(mode),
		"-w", "-t", "filter", "-L", "WEFT-POL-SPOOF", "-v", "-x", "-n").Output()
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(line, "spoofed source") {
			n, _ := strconv.Atoi(f[0])
			return n, nil
		}
	}
	return 0, nil
}
