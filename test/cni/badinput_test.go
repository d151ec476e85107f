package cni

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/testutil"
)

// execWeft runs the weft binary directly with raw stdin, as a runtime
// would, inside the node netns, and returns its CNI error.
func (e *env) execWeft(p *pod, stdin string) error {
	args := &invoke.Args{
		Command: "ADD", ContainerID: p.rt.ContainerID, NetNS: p.rt.NetNS, IfName: "eth0",
		PluginArgs: p.rt.Args, Path: strings.Join(e.paths, ":"),
	}
	var err error
	e.in(func() error {
		_, err = invoke.ExecPluginWithResult(context.Background(),
			filepath.Join(testutil.BinDir(e.t), "weft"), []byte(stdin), args, nil)
		return nil
	})
	return err
}

func wantCode(t *testing.T, what string, err error, code uint, field string) {
	t.Helper()
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("%s: got %v, want a CNI error with code %d", what, err, code)
	}
	if te.Code != code {
		t.Fatalf("%s: code %d (%s), want %d", what, te.Code, te.Msg, code)
	}
	if field != "" && !strings.Contains(te.Msg+te.Details, field) {
		t.Fatalf("%s: message %q does not name %q", what, te.Msg, field)
	}
}

// Bad input gets the spec's error code, a message naming the field, and
// creates nothing: no allocation, no veth, no bridge.
func TestBadInput(t *testing.T) {
	e := newEnv(t)
	p := e.newPod("bad")
	ipam := `"ipam":{"type":"weft-ipam","ranges":[[{"subnet":"10.77.0.0/24"}]],"dataDir":"` + e.dataDir + `"}`
	base := `"name":"` + e.netName + `","type":"weft","bridge":"` + e.bridge + `"`

	wantCode(t, "malformed JSON", e.execWeft(p, `{"cniVersion":"1.0.0",`+base+`,`), types.ErrDecodingFailure, "")
	wantCode(t, "unknown cniVersion", e.execWeft(p, `{"cniVersion":"9.9.9",`+base+`,`+ipam+`}`), types.ErrIncompatibleCNIVersion, "")
	wantCode(t, "mtu as string", e.execWeft(p, `{"cniVersion":"1.0.0",`+base+`,"mtu":"big",`+ipam+`}`), types.ErrDecodingFailure, "mtu")
	wantCode(t, "mtu out of range", e.execWeft(p, `{"cniVersion":"1.0.0",`+base+`,"mtu":20,`+ipam+`}`), types.ErrInvalidNetworkConfig, "mtu")
	wantCode(t, "no ipam", e.execWeft(p, `{"cniVersion":"1.0.0",`+base+`}`), types.ErrInvalidNetworkConfig, "ipam.type")
	wantCode(t, "bridge name too long", e.execWeft(p, `{"cniVersion":"1.0.0","name":"n","type":"weft","bridge":"abcdefghijklmnopq",`+ipam+`}`), types.ErrInvalidNetworkConfig, "bridge")
	wantCode(t, "vlan", e.execWeft(p, `{"cniVersion":"1.0.0",`+base+`,"vlan":5,`+ipam+`}`), types.ErrUnsupportedField, "vlan")

	// The bridge name belongs to a veth in the node netns.
	e.in(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: e.bridge}, PeerName: "x" + e.bridge})
	})
	l := e.confList("1.0.0", e.weftConf("weft-ipam"))
	_, err := e.add(l, p)
	wantCode(t, "bridge name taken by a veth", err, types.ErrInvalidNetworkConfig, e.bridge)

	if al := e.allocations(); len(al) != 0 {
		t.Fatalf("allocations after failed ADDs: %+v", al)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Fatalf("veths after failed ADDs: %v", v)
	}
	e.in(func() error {
		l, err := netlink.LinkByName(e.bridge)
		if err != nil {
			return err
		}
		if l.Type() != "veth" {
			t.Errorf("%s is now a %s", e.bridge, l.Type())
		}
		return nil
	})
	// Nothing in the pod netns either.
	if err := p.ns.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName("eth0"); err == nil {
			t.Error("eth0 exists in the pod netns after failed ADDs")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A failure after IPAM allocated (and after the veth exists) is undone:
// the allocation is released and the veth deleted.
func TestAddUndo(t *testing.T) {
	e := newEnv(t)

	// 1. The pod already has an eth0 (not weft's): the veth cannot be
	// created; the allocation is released, the foreign eth0 untouched.
	p := e.newPod("dup")
	if err := p.ns.Do(func(ns.NetNS) error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "other0"})
	}); err != nil {
		t.Fatal(err)
	}
	l := e.confList("1.1.0", e.weftConf("weft-ipam"))
	if _, err := e.add(l, p); err == nil {
		t.Fatal("ADD succeeded although the pod already has eth0")
	}
	if al := e.allocations(); len(al) != 0 {
		t.Fatalf("allocation kept after failed ADD: %+v", al)
	}
	if err := p.ns.Do(func(ns.NetNS) error { _, err := netlink.LinkByName("other0"); return err }); err != nil {
		t.Fatalf("the pod's own eth0 pair was touched: %v", err)
	}

	// 2. A route the pod cannot install (gateway off-link) fails after the
	// veth exists: veth and allocation are both undone.
	wc := e.weftConf("weft-ipam")
	wc["ipam"].(map[string]any)["routes"] = []map[string]string{{"dst": "192.168.0.0/16", "gw": "10.200.0.1"}}
	l = e.confList("1.1.0", wc)
	q := e.newPod("route")
	if _, err := e.add(l, q); err == nil {
		t.Fatal("ADD succeeded with an off-link route gateway")
	} else {
		t.Logf("ADD failed as expected: %v", err)
	}
	if al := e.allocations(); len(al) != 0 {
		t.Fatalf("allocation kept after failed ADD: %+v", al)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Fatalf("veth kept after failed ADD: %v", v)
	}

	// 3. The same failure while weftd is asked (its wait runs beside the
	// pod end's configuration) and weftd never answers: ADD fails at once
	// instead of waiting out policyTimeout, and leaves no record either.
	dir := t.TempDir()
	sock := filepath.Join(t.TempDir(), "weftd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close() // accepts (the kernel's backlog) and never answers
	wc["endpointDir"], wc["policySocket"], wc["policyTimeout"] = dir, sock, "8s"
	l = e.confList("1.1.0", wc)
	t0 := time.Now()
	if _, err := e.add(l, e.newPod("route-weftd")); err == nil {
		t.Fatal("ADD succeeded with an off-link route gateway")
	}
	if d := time.Since(t0); d > 4*time.Second {
		t.Errorf("failed ADD took %v: it waited for weftd before undoing", d)
	}
	e.assertClean(dir)
	if al := e.allocations(); len(al) != 0 {
		t.Fatalf("allocation kept after failed ADD: %+v", al)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Fatalf("veth kept after failed ADD: %v", v)
	}
}
