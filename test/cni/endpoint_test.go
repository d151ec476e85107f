package cni

import (
	"context"
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
	if eps, _ := endpoint.List(dir); len(eps) != 0 || len(e.allocations()) != 0 || len(e.hostVeths()) != 0 {
		t.Fatalf("failed ADD left records %+v, allocations %v, veths %v", eps, e.allocations(), e.hostVeths())
	}
}
