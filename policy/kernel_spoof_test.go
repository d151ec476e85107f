package policy

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"

	"github.com/weftnet/weft/policy/rules"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// TestKernelSpoofedSource: pod c, which holds CAP_NET_RAW as pods do, sends
// hand-built UDP packets carrying pod a's source address through a raw
// socket. With a policy that admits only a into b, neither the bridged
// packet to b nor the routed one to the "remote" namespace arrives, even on
// the 5-tuple of a's live flow (conntrack); a's own packets do, and the
// anti-spoofing DROP counts the forged ones.
func TestKernelSpoofedSource(t *testing.T) { onBothBackends(t, testKernelSpoofedSource) }

func testKernelSpoofedSource(t *testing.T, tn *testNode, w *Writer, run iptables.Runner) {
	onlyA := rulestest.WithIngress(rulestest.NP("t", "b-from-a", map[string]string{"pod": "b"}, rulestest.TIn), rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "a")}}))
	apply(t, w, tn.render(onlyA), false)

	const port, sport = 9999, 40000
	atB := testutil.ListenUDP(t, tn.pods["b"], port)
	atRemote := testutil.ListenUDP(t, tn.remote, port)
	a, b, remote := addr(tn.ip["a"]), addr(tn.ip["b"]), addr(tn.ip["remote"])
	// Positive controls through the same raw-socket path: a's real packets
	// arrive, bridged to b and routed to remote (and open conntrack entries).
	for _, dst := range []struct {
		ip netip.Addr
		l  *testutil.UDPLog
	}{{b, atB}, {remote, atRemote}} {
		if !sendUntil(t, tn.pods["a"], a, dst.ip, sport, port, "real-"+dst.ip.String(), dst.l) {
			t.Fatalf("a's own packet to %s never arrived", dst.ip)
		}
	}
	// c forges a's address, on the same ports as a's flows.
	for i := 0; i < 3; i++ {
		rawUDP(t, tn.pods["c"], a, b, sport, port, "forged-b")
		rawUDP(t, tn.pods["c"], a, remote, sport, port, "forged-remote")
	}
	// And an unforged packet from c to remote, which its policy allows,
	// shows c's packets do leave when honest.
	if !sendUntil(t, tn.pods["c"], addr(tn.ip["c"]), remote, sport, port, "c-honest", atRemote) {
		t.Fatal("c's unforged packet to remote never arrived")
	}
	time.Sleep(500 * time.Millisecond)
	for _, l := range []*testutil.UDPLog{atB, atRemote} {
		if got := l.Received("forged-"); len(got) > 0 {
			t.Errorf("forged packets arrived: %v", got)
		}
	}
	if n := dropCount(t, tn, run, rules.ChainSpoof, rules.SpoofComment); n < 6 {
		t.Errorf("%s DROP counted %d packets, want >= 6", rules.ChainSpoof, n)
	}
}

// sendUntil sends one raw packet a second until l has received it (the first
// ones may wait for ARP), for up to 5 s.
func sendUntil(t *testing.T, n ns.NetNS, src, dst netip.Addr, sport, dport uint16, payload string, l *testutil.UDPLog) bool {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); {
		rawUDP(t, n, src, dst, sport, dport, payload)
		for i := 0; i < 10; i++ {
			if len(l.Received(payload+" ")) > 0 {
				return true
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return false
}

// rawUDP sends one hand-built packet (any source) from namespace n.
func rawUDP(t *testing.T, n ns.NetNS, src, dst netip.Addr, sport, dport uint16, payload string) {
	t.Helper()
	if err := testutil.SendRawUDP(n, src, dst, sport, dport, payload); err != nil {
		t.Fatal(err)
	}
}

// dropCount reads the packet counter of the rule in chain whose comment
// ends with comment.
func dropCount(t *testing.T, tn *testNode, run iptables.Runner, chain, comment string) int {
	t.Helper()
	out := sh(t, tn.node.Path(), "iptables-"+string(run.Mode), "-w", "-t", "filter", "-L", chain, "-v", "-x", "-n")
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) > 0 && strings.Contains(line, "/* weft:") && strings.HasSuffix(strings.TrimSpace(line), comment+" */") {
			n, err := strconv.Atoi(f[0])
			if err != nil {
				t.Fatalf("counter in %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no rule %q in %s:\n%s", comment, chain, out)
	return 0
}

// TestKernelSpoofedSourceToNode: packets a pod sends to its own node
// (INPUT: node services, hostNetwork pods) get the same source check. Pod
// c's raw-socket packets forged with a's source do not reach a listener in
// the node namespace; c's and a's honest ones do, and the anti-spoofing
// DROP counts the forged ones. No policy is needed for the check.
func TestKernelSpoofedSourceToNode(t *testing.T) { onBothBackends(t, testKernelSpoofedSourceToNode) }

func testKernelSpoofedSourceToNode(t *testing.T, tn *testNode, w *Writer, run iptables.Runner) {
	apply(t, w, tn.render(), false)
	const port, sport = 9998, 40001
	atNode := testutil.ListenUDP(t, tn.node, port)
	a, c, node := addr(tn.ip["a"]), addr(tn.ip["c"]), addr("10.99.0.1")
	for i := 0; i < 3; i++ {
		rawUDP(t, tn.pods["c"], a, node, sport, port, "forged-node")
	}
	if !sendUntil(t, tn.pods["c"], c, node, sport, port, "c-honest", atNode) {
		t.Fatal("c's unforged packet to the node never arrived")
	}
	if !sendUntil(t, tn.pods["a"], a, node, sport, port, "a-honest", atNode) {
		t.Fatal("a's own packet to the node never arrived")
	}
	time.Sleep(300 * time.Millisecond)
	if got := atNode.Received("forged-"); len(got) > 0 {
		t.Errorf("forged packets reached the node: %v", got)
	}
	if n := dropCount(t, tn, run, rules.ChainSpoof, rules.SpoofComment); n < 3 {
		t.Errorf("%s DROP counted %d packets, want >= 3", rules.ChainSpoof, n)
	}
	// Drift: our INPUT jump deleted by hand, another tool's accept on top.
	ipt := "iptables-" + string(run.Mode)
	sh(t, tn.node.Path(), ipt, "-D", "INPUT", "1")
	sh(t, tn.node.Path(), ipt, "-I", "INPUT", "1", "-m", "comment", "--comment", "host-firewall", "-j", "ACCEPT")
	if s := apply(t, w, tn.render(), true); !s.JumpFixed {
		t.Errorf("resync did not restore the INPUT jump: %+v", s)
	}
	if n := w.SpoofedPackets(); n < 3 { // read back with the rules (iptables-save -c)
		t.Errorf("writer counted %d spoofed packets at the read-back, want >= 3", n)
	}
	d, err := iptables.ParseSave(sh(t, tn.node.Path(), ipt+"-save", "-t", "filter"), "filter")
	if err != nil {
		t.Fatal(err)
	}
	if in := d.Chains["INPUT"].Rules; len(in) != 2 || !strings.HasSuffix(iptables.Comment(in[0]), " "+rules.JumpComment) {
		t.Fatalf("INPUT after resync: %v", in)
	}
	rawUDP(t, tn.pods["c"], a, node, sport, port, "forged-again")
	if !sendUntil(t, tn.pods["c"], c, node, sport, port, "c-again", atNode) {
		t.Fatal("c's unforged packet to the node never arrived after the resync")
	}
	if got := atNode.Received("forged-"); len(got) > 0 {
		t.Errorf("forged packets reached the node: %v", got)
	}
}

// TestKernelSpoofedSourceManyEndpoints: the same checks with 24 more
// endpoint records on the node (10.99.1.2-25), so the source check branches
// on address prefixes (`-s 10.99.0.0/27 -g ...` into chains of their own)
// and the three pods' rules sit in a branch: the kernel matches as the
// tracer does.
func TestKernelSpoofedSourceManyEndpoints(t *testing.T) {
	onBothBackends(t, func(t *testing.T, tn *testNode, w *Writer, run iptables.Runner) {
		sfx := strings.TrimSuffix(strings.TrimPrefix(tn.veth["a"], "wv"), "a")
		for i := 0; i < 24; i++ {
			veth := fmt.Sprintf("wv%s%02d", sfx, i) // beside a, b and c
			if i >= 12 {
				veth = fmt.Sprintf("wv%x", sha256.Sum256([]byte(veth)))[:13] // elsewhere
			}
			tn.eps = append(tn.eps, endpoint.Endpoint{PodNamespace: "t", PodName: fmt.Sprint("ghost", i), PodUID: fmt.Sprint("g", i),
				HostVeth: veth, IfName: "eth0", IPs: []string{fmt.Sprintf("10.99.1.%d/24", i+2)}})
		}
		branches := 0
		for _, c := range tn.render().Chains {
			if strings.HasPrefix(c.Name, rules.ChainSource+"-") {
				branches++
			}
		}
		if branches < 2 {
			t.Fatalf("source check has %d branch chains, want a tree", branches)
		}
		testKernelSpoofedSource(t, tn, w, run)
		testKernelSpoofedSourceToNode(t, tn, w, run)
	})
}
