package cni

import (
	"encoding/json"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/podnet"
)

// ifindexes returns the pod's eth0 index and its host veth's index.
func (e *env) ifindexes(p *pod) (podIdx, hostIdx int) {
	e.t.Helper()
	err := p.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			podIdx = l.Attrs().Index
		}
		return err
	})
	if err != nil {
		e.t.Fatalf("pod eth0: %v", err)
	}
	e.in(func() error {
		l, err := netlink.LinkByName(podnet.HostVethName(p.rt.ContainerID, "eth0"))
		if err == nil {
			hostIdx = l.Attrs().Index
		}
		return err
	})
	return podIdx, hostIdx
}

// A duplicate ADD of a container that is already attached returns the
// first ADD's result and leaves the live interface alone: same pod and host
// interface indexes, and an open connection's peer still answers.
func TestDuplicateAdd(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", e.weftConf("weft-ipam"))
	l.Plugins = l.Plugins[:1] // weft's own result, not portmap's echo of it
	srv, cli := e.newPod("srv"), e.newPod("cli")
	first := e.mustAdd(l, srv)
	e.mustAdd(l, cli)
	addr := podIP(t, first).String() + ":7071"
	tcpEcho(t, srv, addr)
	if reply, err := tcpDial(cli, addr, "before"); err != nil || reply != "echo:before" {
		t.Fatalf("before: %q %v", reply, err)
	}
	podIdx, hostIdx := e.ifindexes(srv)

	second := e.mustAdd(l, srv)
	a, _ := json.Marshal(first)
	b, _ := json.Marshal(second)
	if string(a) != string(b) {
		t.Errorf("duplicate ADD result differs:\nfirst  %s\nsecond %s", a, b)
	}
	if p2, h2 := e.ifindexes(srv); p2 != podIdx || h2 != hostIdx {
		t.Errorf("interfaces rebuilt: pod eth0 %d -> %d, host veth %d -> %d", podIdx, p2, hostIdx, h2)
	}
	if reply, err := tcpDial(cli, addr, "after"); err != nil || reply != "echo:after" {
		t.Fatalf("after duplicate ADD: %q %v", reply, err)
	}
	if al := e.allocations(); len(al) != 2 {
		t.Fatalf("allocations after duplicate ADD: %+v", al)
	}
	if err := e.del(l, srv); err != nil {
		t.Fatal(err)
	}
}
