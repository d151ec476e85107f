package ipam

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/testutil"
)

// TestLibcniLifecycle drives the weft-ipam binary through libcni exactly as
// a runtime does (ADD, CHECK, STATUS, GC, DEL), with weft-ipam as the only
// plugin of the list so the test needs no privileges.
func TestLibcniLifecycle(t *testing.T) {
	binDir := testutil.BinDir(t)
	subnetPath := writeSubnetFile(t, "10.244.7.0/24")
	dataDir := t.TempDir()
	name := fmt.Sprintf("libcni-%x", rand.Uint32())
	list, err := libcni.ConfListFromBytes(fmt.Appendf(nil, `{
	  "cniVersion": "1.1.0", "name": %q,
	  "plugins": [{"type": "weft-ipam", "capabilities": {"ips": true},
	               "ipam": {"type": "weft-ipam", "dataDir": %q, "subnetFile": %q}}]
	}`, name, dataDir, subnetPath))
	if err != nil {
		t.Fatal(err)
	}
	netDir := filepath.Join(dataDir, name)
	ctx := context.Background()
	runtime := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil)
	rt := func(id string) *libcni.RuntimeConf {
		return &libcni.RuntimeConf{
			ContainerID: id, IfName: "eth0",
			NetNS: "/var/run/netns/weft-ipam-test-" + id, // never opened by an IPAM plugin
			Args:  [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", id}},
		}
	}

	if err := runtime.GetStatusNetworkList(ctx, list); err != nil {
		t.Fatalf("STATUS: %v", err)
	}
	got := map[string]string{}
	for _, id := range []string{"a", "b", "c"} {
		r, err := runtime.AddNetworkList(ctx, list, rt(id))
		if err != nil {
			t.Fatalf("ADD %s: %v", id, err)
		}
		res, err := types100.NewResultFromResult(r)
		if err != nil {
			t.Fatal(err)
		}
		got[id] = res.IPs[0].Address.String()
		if res.IPs[0].Gateway.String() != "10.244.7.1" || len(res.Routes) != 1 {
			t.Errorf("ADD %s: %+v", id, res)
		}
	}
	if got["a"] == got["b"] || got["b"] == got["c"] || got["a"] == got["c"] {
		t.Fatalf("duplicate addresses %v", got)
	}
	// Capability args reach the plugin as runtimeConfig.ips.
	withIP := rt("d")
	withIP.CapabilityArgs = map[string]any{"ips": []string{"10.244.7.200/24"}}
	r, err := runtime.AddNetworkList(ctx, list, withIP)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := types100.NewResultFromResult(r); res.IPs[0].Address.String() != "10.244.7.200/24" {
		t.Errorf("requested ip: %v", res.IPs)
	}
	if err := runtime.CheckNetworkList(ctx, list, rt("a")); err != nil {
		t.Errorf("CHECK a: %v", err)
	}

	// weftd gone: STATUS reports "plugin not available" (50).
	if err := os.Rename(subnetPath, subnetPath+".away"); err != nil {
		t.Fatal(err)
	}
	var te *types.Error
	if err := runtime.GetStatusNetworkList(ctx, list); !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable {
		t.Errorf("STATUS without subnet file: %v", err)
	}
	if err := os.Rename(subnetPath+".away", subnetPath); err != nil {
		t.Fatal(err)
	}

	// libcni's own way: attachments in its cache that are not valid get a
	// DEL first, then the plugin's GC runs.
	if err := runtime.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
		{ContainerID: "a", IfName: "eth0"}, {ContainerID: "b", IfName: "eth0"}, {ContainerID: "c", IfName: "eth0"},
	}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if ids := allocatedIDs(t, netDir); !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("after first GC: %v", ids)
	}
	// A runtime that lost its cache (crash, reboot): only the plugin's GC
	// can release what it forgot.
	forgetful := libcni.NewCNIConfigWithCacheDir([]string{binDir}, t.TempDir(), nil)
	if err := forgetful.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{
		{ContainerID: "a", IfName: "eth0"},
	}}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if ids := allocatedIDs(t, netDir); !slices.Equal(ids, []string{"a"}) {
		t.Fatalf("after GC with one valid attachment: %v", ids)
	}

	for range 2 {
		if err := runtime.DelNetworkList(ctx, list, rt("a")); err != nil {
			t.Fatalf("DEL a: %v", err)
		}
	}
	// DEL as containerd sends it on remove: no netns.
	gone := rt("b")
	gone.NetNS = ""
	if err := runtime.DelNetworkList(ctx, list, gone); err != nil {
		t.Fatalf("DEL without netns: %v", err)
	}
	if ids := allocatedIDs(t, netDir); len(ids) != 0 {
		t.Fatalf("after DEL: %v", ids)
	}
	if err := forgetful.CheckNetworkList(ctx, list, rt("a")); err == nil {
		t.Error("CHECK passes after DEL")
	}
	onlyStateFile(t, netDir)
}

func allocatedIDs(t *testing.T, dir string) []string {
	t.Helper()
	var ids []string
	for _, a := range diskState(t, dir).Allocations {
		ids = append(ids, a.ContainerID)
	}
	slices.Sort(ids)
	return ids
}
