package main

import (
	"context"
	"errors"
	"io"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
	"github.com/weftnet/weft/policy"
)

// weftd's /readyz with the policy engine wired as in run: a failing sync
// makes it 503 naming policy-sync and the error, a working one clears it.
func TestReadyzPolicySync(t *testing.T) {
	status, metrics := api.NewStatus(), api.NewMetrics()
	for _, c := range []string{api.CondConfig, api.CondLease, api.CondBackend, api.CondConflist} {
		status.Set(c, "") // the agent's part is fine
	}
	status.Set(policy.CondSync, "not yet synced")
	m, err := policy.NewPrometheusMetrics(metrics.Registry)
	if err != nil {
		t.Fatal(err)
	}
	fdp := policy.NewFakeDataplane()
	fdp.SetError(errors.New("iptables-restore: exit status 4"))
	ctl, err := policy.NewController(informers.NewSharedInformerFactory(fake.NewClientset(), 0), policy.ControllerConfig{
		EndpointDir: t.TempDir(), Dataplane: fdp, MinSyncInterval: 5 * time.Millisecond, Metrics: m, Health: status})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	defer func() { cancel(); <-done }()
	srv := httptest.NewServer(api.Handler(status, metrics.Registry, time.Minute))
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := srv.Client().Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	testutil.Eventually(t, "readyz names the failing sync", func() bool {
		code, body := get("/readyz")
		return code == 503 && strings.Contains(body, "- policy-sync: ") && strings.Contains(body, "exit status 4") &&
			strings.Contains(body, "syncs in a row failed")
	})
	if _, body := get("/metrics"); !strings.Contains(body, "weft_policy_sync_errors_total ") ||
		strings.Contains(body, "weft_policy_sync_errors_total 0") {
		t.Errorf("metrics do not count the failed syncs:\n%s", grepLines(body, "weft_policy_sync_errors_total"))
	}
	fdp.SetError(nil)
	testutil.Eventually(t, "readyz ok once syncs work", func() bool { code, body := get("/readyz"); return code == 200 && strings.HasPrefix(body, "ok") })
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The rebuild reads weft-ipam's real disk store: one attachment per address,
// with container ID and ifname; a store never written is empty.
func TestIPAMAttachments(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "weft")
	src := ipamAttachments{store: disk.New(dir, disk.Options{})}
	if atts, err := src.Attachments(context.Background()); err != nil || len(atts) != 0 {
		t.Fatalf("empty store: %v %v", atts, err)
	}
	err := disk.New(dir, disk.Options{}).Update(context.Background(), func(s *store.State) (bool, error) {
		s.Allocations = append(s.Allocations, store.Allocation{IP: netip.MustParseAddr("10.244.1.2"), ContainerID: "c1", IfName: "eth0"},
			store.Allocation{IP: netip.MustParseAddr("10.244.1.3"), ContainerID: "c2", IfName: "net1"})
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	atts, err := src.Attachments(context.Background())
	if err != nil || len(atts) != 2 || atts[0].ContainerID != "c1" || atts[0].IfName != "eth0" || atts[0].IPs[0].String() != "10.244.1.2" ||
		atts[1].ContainerID != "c2" || atts[1].IfName != "net1" {
		t.Fatalf("attachments %+v, %v", atts, err)
	}
}
