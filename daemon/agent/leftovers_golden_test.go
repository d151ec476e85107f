package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
)

// TestSweepGoldenChains: the uninstall sweep removes everything each
// iptables writer leaves (their golden dumps, under today's chain names,
// loaded into the fake table) and nothing else.
func TestSweepGoldenChains(t *testing.T) {
	ctx := context.Background()
	f := table.NewFake()
	for _, g := range []string{"daemon/masq/testdata/masq.golden", "internal/podnet/testdata/masq-4.golden",
		"internal/encapguard/testdata/guard-2.golden", "policy/testdata/policy-filter.golden"} {
		b, err := os.ReadFile(filepath.Join("..", "..", g))
		if err != nil {
			t.Fatal(err)
		}
		if err := f.IPSetRestore(ctx, setsOf(string(b))); err != nil {
			t.Fatal(err)
		}
		if err := f.Restore(ctx, string(b)); err != nil {
			t.Fatalf("%s: %v", g, err)
		}
	}
	if err := f.Restore(ctx, "*filter\n:OTHER - [0:0]\n-A FORWARD -j OTHER\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	tables := []string{"nat", "filter", "raw"}
	script, err := sweepScript(f.Dump(tables...))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Restore(ctx, script); err != nil {
		t.Fatalf("sweep: %v\n%s", err, script)
	}
	if d := f.Dump(tables...); strings.Contains(d, "WEFT-") || !strings.Contains(d, "-A FORWARD -j OTHER") {
		t.Fatalf("after the sweep:\n%s", d)
	}
}

// setsOf returns ipset restore text creating every set a dump's rules use.
func setsOf(dump string) string {
	var b strings.Builder
	for _, line := range strings.Split(dump, "\n") {
		args, _ := iptables.SplitArgs(line)
		for i := 0; i+1 < len(args); i++ {
			if args[i] == "--match-set" {
				b.WriteString("create " + args[i+1] + " hash:ip -exist\n")
			}
		}
	}
	return b.String()
}
