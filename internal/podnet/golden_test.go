package podnet

import (
	"net"
	"os/exec"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/iptables"
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

// TestGoldenMasqKernel runs the plugin's ipMasq for an IPv4 and an IPv6
// pod address (twice, as for a second pod in the same subnets) in a
// throwaway namespace and compares iptables-save and ip6tables-save of the
// nat table with testdata/masq-{4,6}.golden.
func TestGoldenMasqKernel(t *testing.T) {
	testutil.RequireRoot(t)
	n := testutil.NewNS(t)
	ips := []*current.IPConfig{ipConf("10.244.3.7/24"), ipConf("fd00:10:244:3::7/64")}
	for range 2 {
		if err := n.Do(func(ns.NetNS) error { return ensureMasq(ips) }); err != nil {
			t.Fatal(err)
		}
	}
	for fam, tool := range map[string]string{"4": "iptables-save", "6": "ip6tables-save"} {
		out, err := exec.Command("nsenter", "--net="+n.Path(), "--", tool, "-t", "nat").CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v %s", tool, err, out)
		}
		testutil.Golden(t, "masq-"+fam+".golden", iptables.NormalizeSave(string(out)))
	}
}
