package table

import (
	"context"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/iptables"
)

var testOwner = Owner{Tables: []string{"nat", "filter"}, Names: []string{"WEFT-T-NAT"}, Prefixes: []string{"WEFT-T-F-"}, Retired: []string{"WEFT-T-OLD"}}

func testState() State {
	return State{
		Chains: []Chain{
			{Table: "filter", Name: "WEFT-T-F-A", Rules: []Rule{
				{"-s", "10.0.0.0/8", "-m", "comment", "--comment", "t: from a", "-j", "ACCEPT"},
				{"-j", "WEFT-T-F-B"},
			}},
			{Table: "filter", Name: "WEFT-T-F-B", Rules: []Rule{
				{"-d", "10.1.0.0/16", "-j", "RETURN"},
				{"-m", "comment", "--comment", iptables.HashComment("abc123", "hashed rule"), "-j", "DROP"},
			}},
			{Table: "nat", Name: "WEFT-T-NAT", Rules: []Rule{
				{"-s", "10.0.0.0/8", "!", "-d", "224.0.0.0/4", "-m", "comment", "--comment", "t: out", "-j", "MASQUERADE", "--random-fully"},
			}},
		},
		Jumps: []Jump{
			{Table: "filter", Chain: "FORWARD", Pos: First, Rule: Rule{"-m", "comment", "--comment", iptables.HashComment("f00d", "t-jump"), "-j", "WEFT-T-F-A"}},
			{Table: "nat", Chain: "POSTROUTING", Pos: Append, Rule: Rule{"-m", "comment", "--comment", "t: nat", "-j", "WEFT-T-NAT"}},
		},
	}
}

// foreign is someone else's rules, and what an earlier version left.
const foreign = `*filter
:OTHER - [0:0]
:WEFT-T-OLD - [0:0]
-A OTHER -j RETURN
-A FORWARD -m comment --comment other-tool -j OTHER
-A WEFT-T-OLD -j ACCEPT
-A FORWARD -m comment --comment "old name" -j WEFT-T-OLD
COMMIT
*nat
-A POSTROUTING -j MASQUERADE
COMMIT
`

// converged is testState over foreign, as iptables-save prints it.
const converged = `*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:WEFT-T-NAT - [0:0]
-A POSTROUTING -j MASQUERADE
-A POSTROUTING -m comment --comment "t: nat" -j WEFT-T-NAT
-A WEFT-T-NAT -s 10.0.0.0/8 ! -d 224.0.0.0/4 -m comment --comment "t: out" -j MASQUERADE --random-fully
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:OTHER - [0:0]
:WEFT-T-F-A - [0:0]
:WEFT-T-F-B - [0:0]
-A FORWARD -m comment --comment "weft:f00d t-jump" -j WEFT-T-F-A
-A FORWARD -m comment --comment other-tool -j OTHER
-A OTHER -j RETURN
-A WEFT-T-F-A -s 10.0.0.0/8 -m comment --comment "t: from a" -j ACCEPT
-A WEFT-T-F-A -j WEFT-T-F-B
-A WEFT-T-F-B -d 10.1.0.0/16 -j RETURN
-A WEFT-T-F-B -m comment --comment "weft:abc123 hashed rule" -j DROP
COMMIT
`

// drift breaks every kind of thing Apply repairs: the nat jump deleted,
// a rule added to an owned chain, a stale owned chain with a jump to it,
// another tool's rule above the First jump, a retired chain back.
const drift = `*nat
-D POSTROUTING -m comment --comment "t: nat" -j WEFT-T-NAT
COMMIT
*filter
:WEFT-T-F-STALE - [0:0]
:WEFT-T-OLD - [0:0]
-A WEFT-T-F-B -s 10.9.9.9/32 -j ACCEPT
-A WEFT-T-F-STALE -j DROP
-A INPUT -j WEFT-T-F-STALE
-A FORWARD -j WEFT-T-OLD
-I FORWARD 1 -m comment --comment docker-like -j ACCEPT
COMMIT
`

// testConverge runs the scenario on k (a fake or a kernel): converge over
// foreign rules and a retired chain, no write when converged, drift
// repaired by one Apply with read-back, no write after it. It returns the
// dump after each step for the caller to compare.
func testConverge(t *testing.T, k Kernel, restores func() int) (first, repaired string) {
	t.Helper()
	ctx := context.Background()
	dump := func() string {
		var b strings.Builder
		for _, tb := range testOwner.Tables {
			s, err := k.Save(ctx, tb)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(iptables.NormalizeSave(s))
		}
		return b.String()
	}
	if err := k.Restore(ctx, foreign); err != nil {
		t.Fatal(err)
	}
	tb := New(k, testOwner)
	st, err := tb.Apply(ctx, testState(), true)
	if err != nil || !st.Restored || st.ChainsWritten != 3 || st.ChainsDeleted != 1 || st.JumpsFixed != 2 {
		t.Fatalf("first apply: %+v %v", st, err)
	}
	first = dump()
	n := restores()
	for _, readBack := range []bool{false, true} {
		if st, err := tb.Apply(ctx, testState(), readBack); err != nil || st.Restored || restores() != n {
			t.Fatalf("converged apply (readBack=%v) wrote: %+v %v", readBack, st, err)
		}
	}
	if err := k.Restore(ctx, drift); err != nil {
		t.Fatal(err)
	}
	n = restores()
	st, err = tb.Apply(ctx, testState(), true)
	if err != nil || restores() != n+1 || st.ChainsWritten != 1 || st.ChainsDeleted != 2 || st.JumpsFixed != 3 {
		t.Fatalf("repair: %+v %v (restores %d -> %d)", st, err, n, restores())
	}
	repaired = dump()
	if st, err := tb.Apply(ctx, testState(), true); err != nil || st.Restored {
		t.Fatalf("apply after repair wrote: %+v %v", st, err)
	}
	return first, repaired
}

func TestConvergeAndRepairFake(t *testing.T) {
	f := NewFake()
	first, repaired := testConverge(t, f, func() int { return f.Restores })
	if first != converged {
		t.Errorf("converged:\n%s\nwant:\n%s", first, converged)
	}
	// The other tool's rule stays; ours is back on top.
	want := strings.Replace(converged, "-A FORWARD -m comment --comment other-tool -j OTHER\n",
		"-A FORWARD -m comment --comment docker-like -j ACCEPT\n-A FORWARD -m comment --comment other-tool -j OTHER\n", 1)
	if repaired != want {
		t.Errorf("repaired:\n%s\nwant:\n%s", repaired, want)
	}
	if err := New(f, testOwner).Remove(context.Background()); err != nil {
		t.Fatal(err)
	}
	if d := f.Dump("nat", "filter"); strings.Contains(d, "WEFT-") || !strings.Contains(d, "other-tool") || !strings.Contains(d, "docker-like") {
		t.Errorf("after Remove:\n%s", d)
	}
}

func TestRefusesForeignChains(t *testing.T) {
	tb := New(NewFake(), testOwner)
	ctx := context.Background()
	for _, st := range []State{
		{Chains: []Chain{{Table: "filter", Name: "OTHER"}}},
		{Chains: []Chain{{Table: "filter", Name: "WEFT-T-OLD"}}},
		{Chains: []Chain{{Table: "raw", Name: "WEFT-T-F-X"}}},
		{Jumps: []Jump{{Table: "filter", Chain: "FORWARD", Rule: Rule{"-j", "OTHER"}}}},
	} {
		if _, err := tb.Apply(ctx, st, true); err == nil {
			t.Errorf("applied %+v", st)
		}
	}
}

// TestInsertAndAppend: an Insert jump goes to the top when missing and is
// left where it is after; a changed one is replaced by its saved spec.
func TestInsertAndAppend(t *testing.T) {
	f := NewFake()
	ctx := context.Background()
	o := Owner{Tables: []string{"raw"}, Names: []string{"WEFT-G"}}
	st := func(port string) State {
		return State{Chains: []Chain{{Table: "raw", Name: "WEFT-G", Rules: []Rule{{"-j", "DROP"}}}},
			Jumps: []Jump{{Table: "raw", Chain: "PREROUTING", Pos: Insert, Rule: Rule{"-p", "udp", "-m", "udp", "--dport", port, "-j", "WEFT-G"}}}}
	}
	tb := New(f, o)
	if _, err := tb.Apply(ctx, st("8472"), true); err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(ctx, "*raw\n-I PREROUTING 1 -j NOTRACK\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if s, err := tb.Apply(ctx, st("8472"), true); err != nil || s.Restored {
		t.Fatalf("insert jump moved: %+v %v", s, err)
	}
	if _, err := tb.Apply(ctx, st("4789"), true); err != nil {
		t.Fatal(err)
	}
	d := f.Dump("raw")
	if !strings.Contains(d, "-A PREROUTING -p udp -m udp --dport 4789 -j WEFT-G\n-A PREROUTING -j NOTRACK\n") || strings.Contains(d, "8472") {
		t.Fatalf("after port change:\n%s", d)
	}
}

// TestFakeChecks: the fake refuses what the kernel refuses, so an
// ordering mistake in a writer fails rootless tests too.
func TestFakeChecks(t *testing.T) {
	ctx := context.Background()
	f := NewFake()
	if err := f.Restore(ctx, "*filter\n:WEFT-A - [0:0]\n-A FORWARD -j WEFT-A\n-A WEFT-A -m set --match-set weft-s src -j DROP\nCOMMIT\n"); err == nil {
		t.Fatal("rule on a missing set loaded")
	}
	if d := f.Dump("filter"); strings.Contains(d, "WEFT-A") {
		t.Fatalf("failed restore left state:\n%s", d)
	}
	if err := f.IPSetRestore(ctx, "create weft-s hash:ip family inet -exist\nadd weft-s 10.0.0.1\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(ctx, "*filter\n:WEFT-A - [0:0]\n-A FORWARD -j WEFT-A\n-A WEFT-A -m set --match-set weft-s src -j DROP\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{
		"*filter\n-X WEFT-A\nCOMMIT\n",               // not empty
		"*filter\n-F WEFT-A\n-X WEFT-A\nCOMMIT\n",    // still referenced
		"*filter\n-A FORWARD -j WEFT-NONE\nCOMMIT\n", // no such chain
		"*filter\n-D FORWARD -j WEFT-B\nCOMMIT\n",    // no such rule
		"*filter\n-A FORWARD -j ACCEPT\n",            // no COMMIT
		"*filter\n-A FORWARD -g FORWARD\nCOMMIT\n",   // built-in target
	} {
		if err := f.Restore(ctx, bad); err == nil {
			t.Errorf("loaded %q", bad)
		}
	}
	if err := f.IPSetRestore(ctx, "destroy weft-s\n"); err == nil {
		t.Error("destroyed a set in use")
	}
}
