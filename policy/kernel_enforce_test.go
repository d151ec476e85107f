package policy

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"

	"github.com/weftnet/weft/internal/iptables"

	"github.com/weftnet/weft/policy/rules"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// TestKernelEnforcement loads rendered rules with the real Writer into a
// node namespace's own iptables and probes real servers in pod namespaces:
// same-node bridged traffic and routed traffic from a "remote" namespace.
func TestKernelEnforcement(t *testing.T) { onBothBackends(t, testKernelEnforcement) }

func testKernelEnforcement(t *testing.T, tn *testNode, w *Writer, run iptables.Runner) {
	ctx := context.Background()
	mode := run.Mode
	// Someone else's rules, which must survive everything we do.
	foreign := "*filter\n:OTHER-CHAIN - [0:0]\n:WEFT-FORWARD - [0:0]\n-A OTHER-CHAIN -j RETURN\n-A WEFT-FORWARD -s 10.99.0.0/16 -j ACCEPT\n-A FORWARD -m comment --comment other-tool -j OTHER-CHAIN\nCOMMIT\n"
	if err := run.Restore(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	// The node now uses this backend: detection must pick it.
	if got, err := iptables.Detect(ctx, tn.node.Path()); err != nil || got != mode {
		t.Fatalf("detect = %v, %v; want %v", got, err, mode)
	}

	apply(t, w, tn.render(), false)
	tn.check(t, "no policy", []expect{
		{"a", "b", "tcp", 80, true}, {"b", "c", "udp", 81, true}, {"remote", "a", "tcp", 80, true}, {"a", "remote", "tcp", 1, false},
	})

	denyAll := rulestest.NP("t", "deny-all", nil, rulestest.TBoth)
	allowAB := rulestest.WithIngress(rulestest.NP("t", "b-from-a", map[string]string{"pod": "b"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "a")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http")), rulestest.PPort(corev1.ProtocolUDP, rulestest.Num(81))))
	allowAOut := rulestest.WithEgress(rulestest.NP("t", "a-out", map[string]string{"pod": "a"}, rulestest.TEg), rulestest.Eg([]rulestest.From{{PodSelector: rulestest.LS("pod", "b")}}))
	allowRemoteC := rulestest.WithIngress(rulestest.NP("t", "c-from-remote", map[string]string{"pod": "c"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{IPBlock: &networkingv1.IPBlock{CIDR: "10.98.0.0/16", Except: []string{"10.98.1.0/24"}}}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80), 81)))
	st := tn.render(denyAll, allowAB, allowAOut, allowRemoteC)
	apply(t, w, st, false)
	all := []expect{
		{"a", "b", "tcp", 80, true},       // named port http=80, bridged; the reply passes a's default deny
		{"a", "b", "udp", 81, true},       // UDP, reply via conntrack
		{"a", "b", "tcp", 81, false},      // port not allowed
		{"c", "b", "tcp", 80, false},      // peer not selected (and c's egress is denied)
		{"b", "a", "tcp", 80, false},      // default deny
		{"a", "c", "tcp", 80, false},      // a's egress allows only b
		{"remote", "c", "tcp", 80, true},  // routed, ipBlock
		{"remote", "c", "tcp", 81, true},  // endPort range
		{"remote", "b", "tcp", 80, false}, // routed, default deny
		{"c", "remote", "tcp", 80, false}, // egress deny
	}
	tn.check(t, "policies", all)
	// The tracer agrees with the kernel on every probe.
	for _, e := range all {
		if e.from == "remote" || e.to == "remote" {
			continue
		}
		p := rules.Packet{Src: addr(tn.ip[e.from]), Dst: addr(tn.ip[e.to]), Proto: e.proto, DPort: uint16(e.port),
			InIface: tn.bridge, OutIface: tn.bridge, PhysIn: tn.veth[e.from], PhysOut: tn.veth[e.to], Bridged: true}
		if tr := st.Trace("FORWARD", p); tr.Allowed() != e.ok {
			t.Errorf("tracer disagrees with the kernel on %+v: %s", e, tr)
		}
	}

	// Nothing changed: no iptables-restore, no ipset writes.
	if s := apply(t, w, st, true); s.Restored || s.SetsSwapped+s.SetsCreated+s.SetsDeleted > 0 {
		t.Errorf("idempotent apply wrote: %+v", s)
	}

	// A label change is an ipset swap only: c becomes an "a".
	tn.k8sPods[2].Labels["pod"] = "a"
	st2 := tn.render(denyAll, allowAB, allowAOut, allowRemoteC)
	// Scratch sets left by an interrupted update do not block the next one.
	for _, set := range st.IPSets {
		sh(t, tn.node.Path(), "ipset", "create", rules.TempSetName(set.Name), string(set.Type), "family", "inet")
	}
	s := apply(t, w, st2, true)
	if sets, _ := run.IPSetSave(ctx); strings.Contains(sets, "weft-t-") {
		t.Errorf("scratch sets left:\n%s", sets)
	}
	if s.SetsSwapped == 0 {
		t.Errorf("label change: no set swapped: %+v", s)
	}
	tn.check(t, "after label change", []expect{{"c", "b", "tcp", 80, true}, {"c", "remote", "tcp", 80, false}})
	tn.k8sPods[2].Labels["pod"] = "c"
	apply(t, w, st, false)

	// Drift: someone deletes our dispatch chain and our jump by hand.
	save, _ := run.Save(ctx, "filter")
	d, _ := iptables.ParseSave(save, "filter")
	for i, r := range d.Chains["FORWARD"].Rules {
		if strings.Contains(iptables.Comment(r), rules.JumpComment) {
			sh(t, tn.node.Path(), "iptables-"+string(run.Mode), "-D", "FORWARD", itoa(i+1))
		}
	}
	sh(t, tn.node.Path(), "iptables-"+string(run.Mode), "-F", rules.ChainForward)
	sh(t, tn.node.Path(), "iptables-"+string(run.Mode), "-X", rules.ChainForward)
	tn.check(t, "drifted (rules gone)", []expect{{"b", "a", "tcp", 80, true}})
	// And empties a set: a is no longer in b's allowed peers.
	for _, set := range st.IPSets {
		sh(t, tn.node.Path(), "ipset", "flush", set.Name)
	}
	w.Prefetch(ctx)           // as the controller does: read while rendering
	s = apply(t, w, st, true) // the periodic resync
	if !s.JumpFixed || s.ChainsWritten != 1 || s.SetsSwapped == 0 {
		t.Errorf("resync repaired %+v, want the jump, one chain and the sets", s)
	}
	tn.check(t, "after resync", all)

	// Another tool inserts its rule above ours: the resync moves our jump
	// back to the top (deleting the old one by its saved spec) and keeps theirs.
	sh(t, tn.node.Path(), "iptables-"+string(run.Mode), "-I", "FORWARD", "1", "-m", "comment", "--comment", "docker-like", "-j", "ACCEPT")
	if s := apply(t, w, st, true); !s.JumpFixed || s.Restored != true {
		t.Errorf("jump not moved back to the top: %+v", s)
	}
	save, _ = run.Save(ctx, "filter")
	d, _ = iptables.ParseSave(save, "filter")
	fwd := d.Chains["FORWARD"].Rules
	if len(fwd) < 2 || !strings.Contains(iptables.Comment(fwd[0]), rules.JumpComment) || iptables.Comment(fwd[1]) != "docker-like" {
		t.Errorf("FORWARD after resync:\n%s", save)
	}
	n := 0 // INPUT holds a jump of its own
	for _, r := range fwd {
		if strings.Contains(iptables.Comment(r), rules.JumpComment) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d jumps in FORWARD, want 1:\n%s", n, save)
	}
	tn.check(t, "policy still first", []expect{{"b", "a", "tcp", 80, false}})
	sh(t, tn.node.Path(), "iptables-"+string(run.Mode), "-D", "FORWARD", "-m", "comment", "--comment", "docker-like", "-j", "ACCEPT")

	// SCTP: no sockets here, so read the rules back from the kernel.
	sctp := rulestest.WithIngress(rulestest.NP("t", "sctp", map[string]string{"pod": "b"}, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolSCTP, rulestest.Num(9), 19)))
	apply(t, w, tn.render(denyAll, sctp), false)
	save, _ = run.Save(ctx, "filter")
	if !strings.Contains(save, "-p sctp -m sctp --dport 9:19") {
		t.Errorf("SCTP rule not in the kernel:\n%s", save)
	}

	// Foreign rules and weftd's chain are untouched; removing all policy
	// leaves no WEFT-POL/PI/PE/FROM/TO chain or weft- set.
	apply(t, w, &rules.State{}, false)
	save, _ = run.Save(ctx, "filter")
	for _, want := range []string{"-A FORWARD -m comment --comment other-tool -j OTHER-CHAIN", "-A OTHER-CHAIN -j RETURN", "-A WEFT-FORWARD -s 10.99.0.0/16 -j ACCEPT"} {
		if !strings.Contains(save, want) {
			t.Errorf("foreign rule lost: %q\n%s", want, save)
		}
	}
	d, _ = iptables.ParseSave(save, "filter")
	for name := range d.Chains {
		if OwnedChain(name) {
			t.Errorf("chain %s left behind", name)
		}
	}
	if strings.Contains(save, rules.JumpComment) {
		t.Errorf("jump left behind:\n%s", save)
	}
	sets, _ := run.IPSetSave(ctx)
	if strings.Contains(sets, "weft-") {
		t.Errorf("sets left behind:\n%s", sets)
	}
}

// TestUnknownEndpointIsolated: a pod attached to the bridge without a record
// (the plugin has not reported it yet) is cut off, both ways.
func TestUnknownEndpointIsolated(t *testing.T) {
	tn := newTestNode(t)
	w, _ := tn.writer(t, "")
	t.Cleanup(func() { _, _ = w.Apply(context.Background(), &rules.State{}, true) })
	eps := tn.eps
	tn.eps = eps[:2] // c has no record
	apply(t, w, tn.render(), false)
	tn.check(t, "c unknown", []expect{{"a", "b", "tcp", 80, true}, {"a", "c", "tcp", 80, false}, {"c", "a", "tcp", 80, false}, {"remote", "c", "tcp", 80, false}})
	tn.eps = eps
	apply(t, w, tn.render(), false)
	tn.check(t, "c known", []expect{{"a", "c", "tcp", 80, true}, {"c", "a", "udp", 80, true}, {"remote", "c", "tcp", 80, true}})
}
