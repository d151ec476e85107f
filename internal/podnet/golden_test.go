package podnet

import (
	"context"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
	"github.com/weftnet/weft/internal/testutil"
)

func ipConf(cidr string) *current.IPConfig {
	ip, n, err := net.ParseCIDR(cidr)
	if err != nil {
		panic(err)
	}
	n.IP = ip
	return &current.IPConfig{Address: *n}
}

var goldenIPs = []*current.IPConfig{ipConf("10.244.3.7/24"), ipConf("fd00:10:244:3::7/64")}

func nsSave(t *testing.T, n ns.NetNS, tool string) string {
	t.Helper()
	out, err := exec.Command("nsenter", "--net="+n.Path(), "--", tool, "-t", "nat").CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v %s", tool, err, out)
	}
	return iptables.NormalizeSave(string(out))
}

// TestGoldenMasqKernel runs the plugin's ipMasq for an IPv4 and an IPv6
// pod address (twice, as for a second pod in the same subnets) in a
// throwaway namespace and compares iptables-save and ip6tables-save of the
// nat table with testdata/masq-{4,6}.golden.
func TestGoldenMasqKernel(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNS(t)
	for range 2 {
		if err := n.Do(func(ns.NetNS) error { return ensureMasq(context.Background(), goldenIPs) }); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Golden(t, "masq-4.golden", nsSave(t, n, "iptables-save"))
	testutil.Golden(t, "masq-6.golden", nsSave(t, n, "ip6tables-save"))
}

// TestMasqFollowsNodeMode: on a node whose rules are in iptables-legacy,
// ipMasq writes there too (not into nft, the tools' default here).
func TestMasqFollowsNodeMode(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNS(t)
	if err := (iptables.Runner{Mode: iptables.Legacy, NetNS: n.Path()}).Restore(context.Background(),
		"*filter\n-A INPUT -m comment --comment node-firewall -j ACCEPT\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	if err := n.Do(func(ns.NetNS) error { return ensureMasq(context.Background(), goldenIPs[:1]) }); err != nil {
		t.Fatal(err)
	}
	if got := nsSave(t, n, "iptables-legacy-save"); !strings.Contains(got, "-j "+MasqChain) {
		t.Errorf("legacy nat lacks %s:\n%s", MasqChain, got)
	}
	if got := nsSave(t, n, "iptables-nft-save"); strings.Contains(got, "WEFT-") {
		t.Errorf("nft nat of a legacy node got weft's rules:\n%s", got)
	}
}

// TestMasqFake: the rules the plugin loads, in the fake table, are the
// golden ones; an upgrade over the chain of the old name keeps the other
// subnets it held and removes the old chain and its jump.
func TestMasqFake(t *testing.T) {
	ctx := context.Background()
	sub4, sub6 := netip.MustParsePrefix("10.244.3.0/24"), netip.MustParsePrefix("fd00:10:244:3::/64")
	for fam, c := range map[string]struct {
		sub   netip.Prefix
		mcast string
	}{"4": {sub4, "224.0.0.0/4"}, "6": {sub6, "ff00::/8"}} {
		f := table.NewFake()
		for range 2 {
			if err := ensureMasqRules(ctx, f, []netip.Prefix{c.sub}, c.mcast); err != nil {
				t.Fatal(err)
			}
		}
		testutil.Golden(t, "masq-"+fam+".golden", f.Dump("nat"))
	}
	golden, err := os.ReadFile("testdata/masq-4.golden")
	if err != nil {
		t.Fatal(err)
	}
	old := strings.ReplaceAll(string(golden), MasqChain, retiredMasqChain)
	old = strings.Replace(old, "COMMIT\n", "-A WEFT-POSTRTG -s 10.9.0.0/24 -d 10.9.0.0/24 -m comment --comment \"weft: pod to pod\" -j RETURN\nCOMMIT\n", 1)
	f := table.NewFake()
	if err := f.Restore(ctx, old); err != nil {
		t.Fatal(err)
	}
	if err := ensureMasqRules(ctx, f, []netip.Prefix{sub4}, "224.0.0.0/4"); err != nil {
		t.Fatal(err)
	}
	want := strings.Replace(string(golden), "COMMIT\n", "-A "+MasqChain+" -s 10.9.0.0/24 -d 10.9.0.0/24 -m comment --comment \"weft: pod to pod\" -j RETURN\nCOMMIT\n", 1)
	if got := f.Dump("nat"); got != want {
		t.Errorf("after upgrade:\n%s\nwant:\n%s", got, want)
	}
}
