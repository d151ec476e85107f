package iptables

import (
	"context"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/weftnet/weft/internal/testutil"
)

func TestSplitQuote(t *testing.T) {
	for _, s := range []string{"plain", "with space", `q"uote`, `back\slash`, ""} {
		line := "-A X -m comment --comment " + Quote(s) + " -j ACCEPT"
		args, err := SplitArgs(line)
		if err != nil {
			t.Fatal(err)
		}
		if Comment(args) != s {
			t.Errorf("round trip %q -> %q (%v)", s, Comment(args), args)
		}
	}
	if _, err := SplitArgs(`-A X --comment "open`); err == nil {
		t.Error("unterminated quote accepted")
	}
}

func TestParseSave(t *testing.T) {
	text := `# Generated
*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -j MASQUERADE
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [1:2]
:WEFT-A - [0:0]
-A FORWARD -m comment --comment "weft jump" -j WEFT-A
-A WEFT-A -p tcp -m tcp --dport 80 -j ACCEPT
COMMIT
`
	d, err := ParseSave(text, "filter")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(d.Order, []string{"INPUT", "FORWARD", "WEFT-A"}) {
		t.Fatalf("order %v", d.Order)
	}
	if !d.Chains["FORWARD"].Builtin || d.Chains["WEFT-A"].Builtin {
		t.Fatal("builtin flags wrong")
	}
	if Comment(d.Chains["FORWARD"].Rules[0]) != "weft jump" {
		t.Fatalf("rule %v", d.Chains["FORWARD"].Rules[0])
	}
	if _, ok := d.Chains["POSTROUTING"]; ok {
		t.Fatal("nat chain leaked into filter dump")
	}
}

func TestParseIPSetSave(t *testing.T) {
	sets, err := ParseIPSetSave("create weft-a hash:net family inet hashsize 1024 maxelem 65536\nadd weft-a 10.0.0.0/8\nadd weft-a 10.1.0.0/16 nomatch\ncreate weft-b hash:ip family inet\n")
	if err != nil {
		t.Fatal(err)
	}
	if sets["weft-a"].Type != "hash:net" || !reflect.DeepEqual(sets["weft-a"].Members, []string{"10.0.0.0/8", "10.1.0.0/16 nomatch"}) || len(sets["weft-b"].Members) != 0 {
		t.Fatalf("%+v %+v", sets["weft-a"], sets["weft-b"])
	}
}

// TestRunnerInNetNS loads rules and a set into a throwaway namespace with the
// detected backend and reads them back.
func TestRunnerInNetNS(t *testing.T) {
	n := testutil.NewNS(t)
	ctx := context.Background()
	mode, err := Detect(ctx, n.Path())
	if err != nil {
		t.Fatal(err)
	}
	r := Runner{Mode: mode, NetNS: n.Path()}
	if err := r.IPSetRestore(ctx, "create weft-t1 hash:ip family inet\nadd weft-t1 10.9.0.1\n"); err != nil {
		t.Fatal(err)
	}
	err = r.Restore(ctx, "*filter\n:WEFT-T1 - [0:0]\n-A WEFT-T1 -m set --match-set weft-t1 src -m comment --comment \"a b\" -j ACCEPT\nCOMMIT\n")
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.Save(ctx, "filter")
	if err != nil {
		t.Fatal(err)
	}
	d, err := ParseSave(out, "filter")
	if err != nil {
		t.Fatal(err)
	}
	c := d.Chains["WEFT-T1"]
	if c == nil || len(c.Rules) != 1 || Comment(c.Rules[0]) != "a b" {
		t.Fatalf("read back: %s", out)
	}
	sv, err := r.IPSetSave(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sets, _ := ParseIPSetSave(sv)
	if s := sets["weft-t1"]; s == nil || len(s.Members) != 1 || !strings.HasPrefix(s.Members[0], "10.9.0.1") {
		t.Fatalf("ipset read back: %s", sv)
	}
	// Detection now sees rules in the backend that holds them.
	again, err := Detect(ctx, n.Path())
	if err != nil || again != mode {
		t.Fatalf("detect after load: %v %v (want %v)", again, err, mode)
	}
}

// TestNetlinkSwap replaces a set's members over netlink inside a throwaway
// namespace and reads them back with `ipset save`.
func TestNetlinkSwap(t *testing.T) {
	n := testutil.NewNS(t)
	ctx := context.Background()
	r := Runner{Mode: NFT, NetNS: n.Path()}
	if err := r.IPSetRestore(ctx, "create weft-s hash:ip family inet hashsize 1024 maxelem 1048576\nadd weft-s 10.0.0.1\nadd weft-s 10.0.0.2\n"); err != nil {
		t.Fatal(err)
	}
	s, err := NewNetlinkSets(n.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	want := []netip.Addr{netip.MustParseAddr("10.0.0.2"), netip.MustParseAddr("10.0.0.3")}
	if err := s.SwapIPSet(ctx, "weft-s", "weft-s-tmp", want); err != nil {
		t.Fatal(err)
	}
	out, err := r.IPSetSave(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sets, _ := ParseIPSetSave(out)
	got := sets["weft-s"]
	if got == nil || len(got.Members) != 2 || !strings.Contains(strings.Join(got.Members, ","), "10.0.0.3") || strings.Contains(strings.Join(got.Members, ","), "10.0.0.1") {
		t.Fatalf("after swap: %s", out)
	}
	if _, ok := sets["weft-s-tmp"]; ok {
		t.Fatalf("temp set left: %s", out)
	}
	// Nothing leaked into the test's own namespace.
	if host, _ := (Runner{}).IPSetSave(ctx); strings.Contains(host, "weft-s") {
		t.Fatalf("set created in the wrong namespace:\n%s", host)
	}
}

func TestBoundComment(t *testing.T) {
	short := strings.Repeat("c", MaxComment)
	if BoundComment(short) != short {
		t.Errorf("a comment that fits was changed")
	}
	long := "policy " + strings.Repeat("n", 63) + "/" + strings.Repeat("p", 253)
	b := BoundComment(long)
	if len(b) != MaxComment || !strings.HasPrefix(b, long[:200]) || b != BoundComment(long) {
		t.Errorf("bounded %d bytes: %q", len(b), b)
	}
	if BoundComment(long+"x") == b {
		t.Errorf("two long comments with the same head collide")
	}
	multi := strings.Repeat("é", 200) // 400 bytes: the cut must not split a rune
	if m := BoundComment(multi); len(m) > MaxComment || !utf8.ValidString(m) {
		t.Errorf("multi-byte: %d bytes, valid=%v", len(m), utf8.ValidString(m))
	}
}

// TestParseSaveCounters: `iptables-save -c` prefixes each rule with its
// counters; the rules parse as without them and the packet counts are kept.
func TestParseSaveCounters(t *testing.T) {
	text := "*filter\n:INPUT ACCEPT [5:300]\n:WEFT-A - [0:0]\n[12:720] -A INPUT -j WEFT-A\n[0:0] -A WEFT-A -s 10.0.0.1/32 -j RETURN\n[18446744073709551615:1] -A WEFT-A -m comment --comment \"a b\" -j DROP\nCOMMIT\n"
	d, err := ParseSave(text, "filter")
	if err != nil {
		t.Fatal(err)
	}
	a := d.Chains["WEFT-A"]
	if !reflect.DeepEqual(a.Rules[1], []string{"-m", "comment", "--comment", "a b", "-j", "DROP"}) || !reflect.DeepEqual(a.Packets, []uint64{0, 1<<64 - 1}) {
		t.Fatalf("%+v", a)
	}
	if p := d.Chains["INPUT"].Packets; !reflect.DeepEqual(p, []uint64{12}) {
		t.Fatalf("INPUT packets %v", p)
	}
	if _, err := ParseSave("*filter\n[x:0] -A INPUT -j DROP\nCOMMIT\n", "filter"); err == nil {
		t.Fatal("bad counters accepted")
	}
}
