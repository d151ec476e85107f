package iptables

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

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
