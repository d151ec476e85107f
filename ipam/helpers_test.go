package ipam

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/subnetfile"
	"github.com/weftnet/weft/ipam/store/fake"
)

// netConfig builds a network configuration with the given ipam section
// (without braces handling: ipam is a JSON object) plus extra top-level keys.
func netConfig(t testing.TB, version, ipam string, extra map[string]any) []byte {
	t.Helper()
	m := map[string]any{
		"cniVersion": version,
		"name":       fmt.Sprintf("net-%x", rand.Uint32()),
		"type":       "weft",
	}
	var ip map[string]any
	if err := json.Unmarshal([]byte(ipam), &ip); err != nil {
		t.Fatalf("test ipam JSON: %v", err)
	}
	m["ipam"] = ip
	for k, v := range extra {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func cmdArgs(id, ifname string, conf []byte) *skel.CmdArgs {
	return &skel.CmdArgs{ContainerID: id, IfName: ifname, Netns: "/var/run/netns/x", Path: "/opt/cni/bin", StdinData: conf}
}

func wantCode(t testing.TB, err error, code uint, substr string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("want *types.Error code %d, got %T %v", code, err, err)
	}
	if te.Code != code {
		t.Fatalf("want code %d, got %d: %s", code, te.Code, te.Msg)
	}
	if !strings.Contains(te.Msg, substr) {
		t.Fatalf("error %q does not mention %q", te.Msg, substr)
	}
}

func ips(r *types100.Result) []string {
	var out []string
	for _, ip := range r.IPs {
		out = append(out, ip.Address.String())
	}
	return out
}

func newFake() (*Plugin, *fake.Opener) {
	o := fake.NewOpener()
	return New(o), o
}

// writeSubnetFile writes a node subnet file into a test directory.
func writeSubnetFile(t testing.TB, subnet string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "subnet.json")
	if err := subnetfile.Write(path, &subnetfile.File{
		Network: netip.MustParsePrefix("10.244.0.0/16"),
		Subnet:  netip.MustParsePrefix(subnet),
		MTU:     1450,
	}); err != nil {
		t.Fatal(err)
	}
	return path
}

func mustAdd(t testing.TB, p *Plugin, a *skel.CmdArgs) *types100.Result {
	t.Helper()
	r, err := p.Add(context.Background(), a)
	if err != nil {
		t.Fatalf("ADD %s/%s: %v", a.ContainerID, a.IfName, err)
	}
	return r
}

func dataDirOf(t testing.TB, conf []byte) string {
	t.Helper()
	c, err := parseConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	return c.dataDir
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
