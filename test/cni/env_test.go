// Package cni holds the privileged tests of the weft CNI plugin: the
// conflist [weft (weft-ipam), portmap, bandwidth] driven through libcni the
// way containerd drives it, with the node bridge and host veths inside a
// throwaway "node" netns and every pod in its own netns.
package cni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
)

// env is one test's node: a netns holding the bridge, a libcni config with
// its own cache dir, and a private IPAM data dir.
type env struct {
	t        *testing.T
	node     ns.NetNS
	bridge   string
	netName  string
	dataDir  string
	cacheDir string
	subnet   string
	cni      *libcni.CNIConfig
	paths    []string
}

func randHex(n int) string {
	b := make([]byte, (n+1)/2)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// newEnv prepares a node netns and a libcni config searching extraPaths
// first, then weft's binaries and the reference plugins.
func newEnv(t *testing.T, extraPaths ...string) *env {
	t.Helper()
	testutil.RequireRoot(t)
	e := &env{
		t:        t,
		node:     testutil.NewNS(t),
		bridge:   "wt" + randHex(8),
		netName:  "weft-test-" + randHex(6),
		dataDir:  t.TempDir(),
		cacheDir: t.TempDir(),
		subnet:   "10.77.0.0/24",
	}
	e.paths = append(append([]string{}, extraPaths...), testutil.BinDir(t), testutil.RefPluginDir(t))
	e.cni = libcni.NewCNIConfigWithCacheDir(e.paths, e.cacheDir, nil)
	e.in(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return e
}

// in runs fn inside the node netns on a locked thread (processes libcni
// starts from there inherit the node netns).
func (e *env) in(fn func() error) {
	e.t.Helper()
	if err := e.node.Do(func(ns.NetNS) error { return fn() }); err != nil {
		e.t.Fatal(err)
	}
}

// inErr is in, returning fn's error instead of failing.
func (e *env) inErr(fn func() error) error {
	return e.node.Do(func(ns.NetNS) error { return fn() })
}

// weftConf is the weft plugin's entry; ipamType selects the IPAM plugin.
func (e *env) weftConf(ipamType string) map[string]any {
	return map[string]any{
		"type":             "weft",
		"bridge":           e.bridge,
		"isDefaultGateway": true,
		"ipam": map[string]any{
			"type":    ipamType,
			"ranges":  [][]map[string]string{{{"subnet": e.subnet}}},
			"dataDir": e.dataDir,
		},
	}
}

// confList builds the conflist [weft, portmap, bandwidth] at version v.
func (e *env) confList(v string, weft map[string]any) *libcni.NetworkConfigList {
	e.t.Helper()
	raw := map[string]any{
		"cniVersion": v,
		"name":       e.netName,
		"plugins": []any{
			weft,
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
			map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}},
		},
	}
	b, err := json.Marshal(raw)
	if err != nil {
		e.t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		e.t.Fatalf("conflist: %v", err)
	}
	return l
}

// pod is one sandbox: its netns and the runtime config libcni gets.
type pod struct {
	ns ns.NetNS
	rt *libcni.RuntimeConf
}

// newPod creates a pod netns and a runtime config shaped like containerd's.
func (e *env) newPod(name string) *pod {
	e.t.Helper()
	n := testutil.NewNS(e.t)
	id := randHex(64)
	return &pod{ns: n, rt: &libcni.RuntimeConf{
		ContainerID: id,
		NetNS:       n.Path(),
		IfName:      "eth0",
		Args: [][2]string{
			{"IgnoreUnknown", "1"},
			{"K8S_POD_NAMESPACE", "default"},
			{"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", id},
			{"K8S_POD_UID", randHex(32)},
		},
		CapabilityArgs: map[string]any{},
	}}
}

func (e *env) add(l *libcni.NetworkConfigList, p *pod) (types.Result, error) {
	var (
		r   types.Result
		err error
	)
	e.in(func() error {
		r, err = e.cni.AddNetworkList(context.Background(), l, p.rt)
		return nil
	})
	return r, err
}

func (e *env) mustAdd(l *libcni.NetworkConfigList, p *pod) *current.Result {
	e.t.Helper()
	r, err := e.add(l, p)
	if err != nil {
		e.t.Fatalf("ADD %s: %v", p.rt.ContainerID[:8], err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		e.t.Fatalf("convert result: %v", err)
	}
	return res
}

func (e *env) del(l *libcni.NetworkConfigList, p *pod) error {
	var err error
	e.in(func() error {
		err = e.cni.DelNetworkList(context.Background(), l, p.rt)
		return nil
	})
	return err
}

func (e *env) check(l *libcni.NetworkConfigList, p *pod) error {
	var err error
	e.in(func() error {
		err = e.cni.CheckNetworkList(context.Background(), l, p.rt)
		return nil
	})
	return err
}

// allocations reads the weft-ipam store of the network.
func (e *env) allocations() []store.Allocation {
	e.t.Helper()
	var out []store.Allocation
	dir := filepath.Join(e.dataDir, e.netName)
	if _, err := os.Stat(dir); os.IsNotExist(err) {
		return nil
	}
	err := disk.New(dir, disk.Options{}).View(context.Background(), func(s *store.State) error {
		out = append(out, s.Allocations...)
		return nil
	})
	if err != nil {
		e.t.Fatalf("read ipam store: %v", err)
	}
	return out
}

// hostVeths lists weft's host veths in the node netns.
func (e *env) hostVeths() []string {
	e.t.Helper()
	var out []string
	e.in(func() error {
		links, err := netlink.LinkList()
		if err != nil {
			return err
		}
		for _, l := range links {
			if l.Type() == "veth" && strings.HasPrefix(l.Attrs().Name, podnet.HostVethPrefix) {
				out = append(out, l.Attrs().Name)
			}
		}
		return nil
	})
	return out
}

// clearCache forgets every attachment libcni cached, as a runtime that
// lost its state would.
func (e *env) clearCache() {
	e.t.Helper()
	if err := os.RemoveAll(filepath.Join(e.cacheDir, "results")); err != nil {
		e.t.Fatal(err)
	}
}

// podIP returns the pod's IPv4 address from a result.
func podIP(t *testing.T, r *current.Result) netip.Addr {
	t.Helper()
	for _, ip := range r.IPs {
		if a, ok := netip.AddrFromSlice(ip.Address.IP.To4()); ok && ip.Address.IP.To4() != nil {
			return a
		}
	}
	t.Fatalf("no IPv4 in result %v", r)
	return netip.Addr{}
}

// tcpEcho listens on addr inside the pod netns and echoes one line per
// connection until the test ends.
func tcpEcho(t *testing.T, p *pod, addr string) {
	t.Helper()
	var ln net.Listener
	err := p.ns.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		t.Fatalf("listen in pod: %v", err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 256)
				n, _ := c.Read(buf)
				_, _ = c.Write(append([]byte("echo:"), buf[:n]...))
			}()
		}
	}()
}

// tcpDial connects from inside the pod netns and returns the echoed reply.
func tcpDial(p *pod, addr, msg string) (string, error) {
	var c net.Conn
	err := p.ns.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 3*time.Second)
		return err
	})
	if err != nil {
		return "", fmt.Errorf("dial %s: %w", addr, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, 256)
	n, err := c.Read(buf)
	if err != nil {
		return "", fmt.Errorf("read from %s: %w", addr, err)
	}
	return string(buf[:n]), nil
}
