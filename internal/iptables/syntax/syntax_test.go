package syntax

import (
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
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
