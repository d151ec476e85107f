package cni

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/podnet"
)

// With endpointDir set (weftd's conflist sets it), ADD leaves one record
// per attachment carrying the pod identity from CNI_ARGS and the pod's
// addresses, DEL removes it, and GC removes the records of attachments
// that are not valid any more. ADD without pod identity fails and leaves
// nothing behind.
func TestEndpointRecords(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	wc := e.weftConf("weft-ipam")
	wc["endpointDir"] = dir
	l := e.confList("1.1.0", wc)

	a, b := e.newPod("ep-a"), e.newPod("ep-b")
	ra := e.mustAdd(l, a)
	e.mustAdd(l, b)
	eps, err := endpoint.List(dir)
	if err != nil || len(eps) != 2 {
		t.Fatalf("records after 2 ADDs: %+v, %v", eps, err)
	}
	var got *endpoint.Endpoint
	for i := range eps {
		if eps[i].ContainerID == a.rt.ContainerID {
			got = &eps[i]
		}
	}
	if got == nil {
		t.Fatalf("no record for pod a in %+v", eps)
	}
	if got.PodNamespace != "default" || got.PodName != "ep-a" || got.PodUID == "" ||
		got.HostVeth != podnet.HostVethName(a.rt.ContainerID, "eth0") || got.IfName != "eth0" ||
		len(got.IPs) != 1 || got.IPs[0] != ra.IPs[0].Address.String() {
		t.Fatalf("record for pod a: %+v (result IP %s)", got, ra.IPs[0].Address.String())
	}

	if err := e.del(l, a); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if eps, _ := endpoint.List(dir); len(eps) != 1 || eps[0].ContainerID != b.rt.ContainerID {
		t.Fatalf("records after DEL of a: %+v", eps)
	}

	// The runtime forgot pod b (lost cache): GC whose valid attachments
	// do not include it removes its record along with its veth and address.
	e.clearCache()
	e.in(func() error {
		return e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: randHex(64), IfName: "eth0"}},
		})
	})
	if eps, _ := endpoint.List(dir); len(eps) != 0 {
		t.Fatalf("records after GC: %+v", eps)
	}

	// No pod identity: ADD fails with code 4 and undoes everything.
	c := e.newPod("ep-c")
	c.rt.Args = [][2]string{{"IgnoreUnknown", "1"}}
	_, err = e.add(l, c)
	wantCode(t, "ADD without K8S_POD_*", err, types.ErrInvalidEnvironmentVariables, "K8S_POD_NAMESPACE")
	e.assertClean(dir)
}

// With policySocket set, ADD returns only after weftd answers that the
// pod's rules are in; a weftd that is away or does not answer in time fails
// the ADD with code 11 (try again later) and leaves nothing behind.
func TestPolicyWait(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	sock := filepath.Join(t.TempDir(), "weftd.sock")
	wc := e.weftConf("weft-ipam")
	wc["endpointDir"] = dir
	wc["policySocket"] = sock
	wc["policyTimeout"] = "300ms"
	l := e.confList("1.0.0", wc)

	// weftd away: no socket.
	p := e.newPod("pw-away")
	_, err := e.add(l, p)
	wantCode(t, "ADD with weftd away", err, types.ErrTryAgainLater, "policy")
	e.assertClean(dir)

	// weftd answers for the pod's veth only once it has seen its record.
	var asked atomic.Value
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	programmed := atomic.Bool{}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, endpoint.ProgrammedPath) {
			// The plugin also reports each ADD/DEL's duration (metrics);
			// that call must not count as the policy wait.
			w.WriteHeader(http.StatusNoContent)
			return
		}
		veth := strings.TrimPrefix(r.URL.Path, endpoint.ProgrammedPath)
		asked.Store(veth)
		if _, err := os.Stat(filepath.Join(dir, veth+".json")); err != nil || !programmed.Load() {
			http.Error(w, "not programmed", http.StatusGatewayTimeout)
			return
		}
		w.WriteHeader(http.StatusOK)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	p = e.newPod("pw-timeout")
	_, err = e.add(l, p)
	wantCode(t, "ADD with rules not programmed", err, types.ErrTryAgainLater, "policy")
	e.assertClean(dir)

	programmed.Store(true)
	p = e.newPod("pw-ok")
	e.mustAdd(l, p)
	if got, want := asked.Load(), podnet.HostVethName(p.rt.ContainerID, "eth0"); got != want {
		t.Fatalf("weftd asked about %v, want %s", got, want)
	}
	if err := e.del(l, p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	e.assertClean(dir)
}

// assertClean fails unless no record, allocation or host veth is left.
func (e *env) assertClean(dir string) {
	e.t.Helper()
	if eps, _ := endpoint.List(dir); len(eps) != 0 || len(e.allocations()) != 0 || len(e.hostVeths()) != 0 {
		e.t.Fatalf("left behind: records %+v, allocations %v, veths %v", eps, e.allocations(), e.hostVeths())
	}
}
