package ops

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
)

// The real weft plugin (through libcni, in a throwaway node namespace) is
// stopped inside its ADD right after weft-ipam allocated the address and
// before the plugin wrote the attachment's record: the IPAM is a wrapper
// that runs weft-ipam and then waits for the test. An operator's release
// in that window must not free the fresh address (weftd's listing shows
// it as being added); once the ADD finished, the pod's address is still
// allocated and still not releasable.
func TestReleaseDuringRealAdd(t *testing.T) {
	testutil.RequireRoot(t)
	bin, tmp := testutil.BinDir(t), t.TempDir()
	mark, goOn := filepath.Join(tmp, "allocated"), filepath.Join(tmp, "go-on")
	script := fmt.Sprintf(`#!/bin/sh
out=$(%q/weft-ipam); rc=$?
if [ "$CNI_COMMAND" = ADD ]; then touch %q; while [ ! -e %q ]; do sleep 0.02; done; fi
printf '%%s' "$out"; exit $rc
`, bin, mark, goOn)
	if err := os.WriteFile(filepath.Join(tmp, "slow-ipam"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	eps, dataDir, network := filepath.Join(tmp, "endpoints"), filepath.Join(tmp, "ipam"), "weft-addrace"
	conf, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": network, "plugins": []any{map[string]any{
		"type": "weft", "bridge": fmt.Sprintf("wr%06x", time.Now().UnixNano()&0xffffff), "isDefaultGateway": true, "endpointDir": eps,
		"ipam": map[string]any{"type": "slow-ipam", "ranges": [][]map[string]string{{{"subnet": "10.79.0.0/24"}}}, "dataDir": dataDir}}}})
	list, err := libcni.ConfListFromBytes(conf)
	if err != nil {
		t.Fatal(err)
	}
	cni := libcni.NewCNIConfigWithCacheDir([]string{bin, tmp}, t.TempDir(), nil)
	node, pod := testutil.NewNS(t), testutil.NewNS(t)
	id := fmt.Sprintf("%064x", time.Now().UnixNano())
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: pod.Path(), IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "t"}, {"K8S_POD_NAME", "p"}, {"K8S_POD_UID", "uid-p"}}}
	added := make(chan error, 1)
	go func() {
		added <- node.Do(func(ns.NetNS) error { _, err := cni.AddNetworkList(context.Background(), list, rt); return err })
	}()
	t.Cleanup(func() {
		_ = os.WriteFile(goOn, nil, 0o600)
		<-added
		_ = node.Do(func(ns.NetNS) error { return cni.DelNetworkList(context.Background(), list, rt) })
	})
	testutil.Eventually(t, "weft-ipam allocated inside the ADD", func() bool { _, err := os.Stat(mark); return err == nil })

	d := Deps{Node: "n1", IPAM: disk.New(filepath.Join(dataDir, network), disk.Options{}), EndpointDir: eps,
		PodLive: func(string) bool { return false }, Log: slog.New(slog.DiscardHandler)}
	ip := allocated(t, d, id)
	if recs, _ := endpoint.List(eps); len(recs) != 0 || !endpoint.Adding(eps, id) {
		t.Errorf("in the window: records %v, ADD lock held %v; want no record and the lock held", recs, endpoint.Adding(eps, id))
	}
	if r, err := d.releaseAddr(context.Background(), ip, id); err == nil || r.Released != 0 {
		t.Errorf("release of %s while its ADD runs: %+v %v, want refused", ip, r, err)
	}
	if err := os.WriteFile(goOn, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := <-added; err != nil {
		t.Fatalf("ADD: %v", err)
	}
	added <- nil // for the cleanup
	if got := allocated(t, d, id); got != ip {
		t.Fatalf("after the ADD the pod holds %s, want %s", got, ip)
	}
	if _, err := d.releaseAddr(context.Background(), ip, id); err == nil {
		t.Errorf("release of the running pod's address %s succeeded", ip)
	}
}

// allocated is the address the store holds for container id.
func allocated(t *testing.T, d Deps, id string) netip.Addr {
	t.Helper()
	var ip netip.Addr
	err := d.IPAM.View(context.Background(), func(s *store.State) error {
		for _, a := range s.Allocations {
			if a.ContainerID == id {
				ip = a.IP
			}
		}
		return nil
	})
	if err != nil || !ip.IsValid() {
		t.Fatalf("no allocation of %s: %v", id, err)
	}
	return ip
}
