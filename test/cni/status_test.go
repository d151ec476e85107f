package cni

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/policy"
)

// With policySocket set, STATUS asks weftd: no socket, a socket nobody
// answers on, and a weftd whose policy engine has not synced all give code
// 50 (plugin not available) quickly; the production handler of a running
// controller makes STATUS succeed.
func TestStatusPolicySocket(t *testing.T) {
	e := newEnv(t)
	sock := filepath.Join(t.TempDir(), "weftd.sock")
	wc := e.weftConf("weft-ipam")
	wc["endpointDir"] = t.TempDir()
	wc["policySocket"] = sock
	l := e.confList("1.1.0", wc)
	status := func() error {
		return e.inErr(func() error { return e.cni.GetStatusNetworkList(context.Background(), l) })
	}
	want50 := func(what, msg string) {
		t.Helper()
		t0 := time.Now()
		err := status()
		var te *types.Error
		if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, msg) {
			t.Fatalf("STATUS with %s: %v, want code 50 with %q", what, err, msg)
		}
		if d := time.Since(t0); d > podnet.StatusTimeout+2*time.Second {
			t.Errorf("STATUS with %s took %v", what, d)
		}
	}

	want50("no socket", sock)

	// A socket that accepts but never answers (a stuck weftd).
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	want50("a socket that does not answer", "does not answer")
	ln.Close()

	// weftd's own handler, controller not running yet: not synced.
	client := fake.NewClientset()
	ctl, err := policy.NewController(informers.NewSharedInformerFactory(client, 0), policy.ControllerConfig{
		EndpointDir: t.TempDir(), Dataplane: policy.NewFakeDataplane(), MinSyncInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	routes := api.NewRoutes()
	if err := policy.RegisterLocalAPI(routes, ctl); err != nil {
		t.Fatal(err)
	}
	ln, err = net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: routes}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	want50("policy engine not synced", "not yet synced")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := status()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("STATUS with a synced weftd: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
