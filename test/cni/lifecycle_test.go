package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/subnetfile"
)

// Two pods on one node talk TCP through the bridge; CHECK passes until the
// pod's default route is deleted; DEL twice succeeds and leaves nothing.
func TestTwoPodsTCPCheckDel(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", e.weftConf("weft-ipam"))

	a, b := e.newPod("a"), e.newPod("b")
	a.rt.CapabilityArgs["portMappings"] = []map[string]any{{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}}
	a.rt.CapabilityArgs["bandwidth"] = map[string]any{"ingressRate": 100_000_000, "ingressBurst": 4294967295, "egressRate": 100_000_000, "egressBurst": 4294967295}
	ra := e.mustAdd(l, a)
	rb := e.mustAdd(l, b)

	// Result shape: bridge, host veth, pod interface with sandbox; IPs on
	// the pod interface.
	if len(ra.Interfaces) < 3 || ra.Interfaces[0].Name != e.bridge || ra.Interfaces[2].Sandbox != a.ns.Path() {
		t.Fatalf("interfaces %+v", ra.Interfaces)
	}
	if ra.Interfaces[1].Name != podnet.HostVethName(a.rt.ContainerID, "eth0") {
		t.Fatalf("host veth %s, want deterministic name", ra.Interfaces[1].Name)
	}
	if *ra.IPs[0].Interface != 2 {
		t.Fatalf("IP points at interface %d", *ra.IPs[0].Interface)
	}
	ipA, ipB := podIP(t, ra), podIP(t, rb)
	if ipA == ipB {
		t.Fatalf("both pods got %s", ipA)
	}
	// The host veth is a port of the bridge, hairpin on.
	e.in(func() error {
		br, err := netlink.LinkByName(e.bridge)
		if err != nil {
			return err
		}
		hv, err := netlink.LinkByName(ra.Interfaces[1].Name)
		if err != nil {
			return err
		}
		if hv.Attrs().MasterIndex != br.Attrs().Index {
			return fmt.Errorf("host veth not on bridge")
		}
		// LinkByName never fills Protinfo: ask for the bridge port's
		// flags (IFLA_PROTINFO of an AF_BRIDGE link dump).
		pi, err := netlink.LinkGetProtinfo(hv)
		if err != nil {
			return fmt.Errorf("bridge port flags of %s: %w", hv.Attrs().Name, err)
		}
		if !pi.Hairpin {
			return fmt.Errorf("hairpin off on bridge port %s (flags: %s)", hv.Attrs().Name, pi.String())
		}
		return nil
	})

	tcpEcho(t, a, net.JoinHostPort(ipA.String(), "8080"))
	got, err := tcpDial(b, net.JoinHostPort(ipA.String(), "8080"), "hello")
	if err != nil || got != "echo:hello" {
		t.Fatalf("pod b -> pod a over TCP: %q, %v", got, err)
	}

	// The chained reference plugins worked from weft's prevResult:
	// portmap forwards the gateway's hostPort 18080 to pod a (hairpin
	// through the node, masqueraded), bandwidth shaped the host veth.
	gw := ra.IPs[0].Gateway.String()
	got, err = tcpDial(b, net.JoinHostPort(gw, "18080"), "via hostport")
	if err != nil || got != "echo:via hostport" {
		t.Fatalf("pod b -> hostPort 18080 -> pod a: %q, %v", got, err)
	}
	e.in(func() error {
		out, err := exec.Command("tc", "qdisc", "show", "dev", ra.Interfaces[1].Name).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "tbf") {
			return fmt.Errorf("bandwidth: no tbf qdisc on the host veth: %s %v", out, err)
		}
		return nil
	})

	if err := e.check(l, a); err != nil {
		t.Fatalf("CHECK on a healthy pod: %v", err)
	}
	// Delete pod a's default route: CHECK must fail.
	err = a.ns.Do(func(ns.NetNS) error {
		_, dflt, _ := net.ParseCIDR("0.0.0.0/0")
		return netlink.RouteDel(&netlink.Route{Dst: dflt})
	})
	if err != nil {
		t.Fatalf("delete default route: %v", err)
	}
	if err := e.check(l, a); err == nil {
		t.Fatal("CHECK passed after the pod's default route was deleted")
	}

	for i := range 2 {
		if err := e.del(l, a); err != nil {
			t.Fatalf("DEL #%d of pod a: %v", i+1, err)
		}
	}
	// Pod b's netns path is gone (the test still holds the netns open, so
	// its veth lives on): DEL must still find and delete the host veth.
	if err := unix.Unmount(b.ns.Path(), unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(b.ns.Path()); err != nil {
		t.Fatal(err)
	}
	if err := e.del(l, b); err != nil {
		t.Fatalf("DEL of pod b with its netns path gone: %v", err)
	}
	// containerd's second DEL comes without netns.
	b.rt.NetNS = ""
	if err := e.del(l, b); err != nil {
		t.Fatalf("second DEL of pod b without netns: %v", err)
	}
	if al := e.allocations(); len(al) != 0 {
		t.Fatalf("allocations left after DEL: %+v", al)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Fatalf("veths left after DEL: %v", v)
	}
	// A DEL for a container never added succeeds as well.
	if err := e.del(l, e.newPod("ghost")); err != nil {
		t.Fatalf("DEL of a never-added container: %v", err)
	}
}

// GC with one valid attachment releases the others, once libcni has
// forgotten them (so the plugin's own GC is what cleans up).
func TestGCReleasesInvalidAttachments(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", e.weftConf("weft-ipam"))
	pods := []*pod{e.newPod("p0"), e.newPod("p1"), e.newPod("p2")}
	for _, p := range pods {
		e.mustAdd(l, p)
	}
	if n := len(e.allocations()); n != 3 {
		t.Fatalf("%d allocations after 3 ADDs", n)
	}
	e.clearCache()
	// A GC without any attachment list (libcni sends none when given no
	// GCArgs) must not collect anything.
	e.in(func() error { return e.cni.GCNetworkList(context.Background(), l, nil) })
	if n, v := len(e.allocations()), len(e.hostVeths()); n != 3 || v != 3 {
		t.Fatalf("GC without attachment list left %d allocations, %d veths; want 3, 3", n, v)
	}
	keep := pods[0]
	e.in(func() error {
		return e.cni.GCNetworkList(context.Background(), l, &libcni.GCArgs{
			ValidAttachments: []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}},
		})
	})
	al := e.allocations()
	if len(al) != 1 || al[0].ContainerID != keep.rt.ContainerID {
		t.Fatalf("allocations after GC: %+v", al)
	}
	v := e.hostVeths()
	if len(v) != 1 || v[0] != podnet.HostVethName(keep.rt.ContainerID, "eth0") {
		t.Fatalf("veths after GC: %v", v)
	}
	if err := e.del(l, keep); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if len(e.allocations()) != 0 || len(e.hostVeths()) != 0 {
		t.Fatalf("left after DEL: %v %v", e.allocations(), e.hostVeths())
	}
}

// STATUS is ready on a healthy node and reports code 50 when the bridge
// name is taken by a non-bridge link.
func TestStatus(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", e.weftConf("weft-ipam"))
	e.in(func() error { return e.cni.GetStatusNetworkList(context.Background(), l) })
	e.in(func() error {
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: e.bridge}, PeerName: e.bridge + "p"})
	})
	err := e.inErr(func() error { return e.cni.GetStatusNetworkList(context.Background(), l) })
	var te *types.Error
	if !errors.As(err, &te) || te.Code != types.ErrPluginNotAvailable || !strings.Contains(te.Msg, e.bridge) {
		t.Fatalf("STATUS with bridge name taken: %v, want code 50 naming the bridge", err)
	}
}

// Every supported spec version gets ADD, CHECK (0.4.0+), DEL, and a result
// of that version.
func TestSpecVersions(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			e := newEnv(t)
			l := e.confList(v, e.weftConf("weft-ipam"))
			p := e.newPod("v")
			r, err := e.add(l, p)
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if r.Version() != v {
				t.Fatalf("result version %s, want %s", r.Version(), v)
			}
			if v != "0.3.1" {
				if err := e.check(l, p); err != nil {
					t.Fatalf("CHECK: %v", err)
				}
			}
			if err := e.del(l, p); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			if len(e.allocations()) != 0 || len(e.hostVeths()) != 0 {
				t.Fatalf("left after DEL: %v %v", e.allocations(), e.hostVeths())
			}
		})
	}
}

// Any other IPAM type is exec'd from CNI_PATH: the reference host-local
// works unchanged, through ADD, CHECK and DEL.
func TestHostLocalIPAM(t *testing.T) {
	e := newEnv(t)
	l := e.confList("1.1.0", e.weftConf("host-local"))
	p := e.newPod("hl")
	r := e.mustAdd(l, p)
	ip := podIP(t, r)
	if _, err := os.Stat(filepath.Join(e.dataDir, e.netName, ip.String())); err != nil {
		t.Fatalf("host-local holds no file for %s: %v", ip, err)
	}
	if err := e.check(l, p); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	if err := e.del(l, p); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.dataDir, e.netName, ip.String())); !os.IsNotExist(err) {
		t.Fatalf("host-local still holds %s after DEL (%v)", ip, err)
	}
	if v := e.hostVeths(); len(v) != 0 {
		t.Fatalf("veths after DEL: %v", v)
	}
}

// ipMasq installs weft's shared masquerade rules for the pod subnet in the
// node's nat table.
func TestIPMasq(t *testing.T) {
	e := newEnv(t)
	wc := e.weftConf("weft-ipam")
	wc["ipMasq"] = true
	l := e.confList("1.1.0", wc)
	p := e.newPod("m")
	e.mustAdd(l, p)
	e.mustAdd(l, e.newPod("m2"))
	var out []byte
	e.in(func() error {
		var err error
		out, err = exec.Command("iptables", "-w", "-t", "nat", "-S", podnet.MasqChain).CombinedOutput()
		return err
	})
	rules := string(out)
	if !strings.Contains(rules, "-s "+e.subnet+" ! -d 224.0.0.0/4") || !strings.Contains(rules, "-j MASQUERADE") ||
		strings.Count(rules, "MASQUERADE") != 1 {
		t.Fatalf("nat %s after two ADDs:\n%s", podnet.MasqChain, rules)
	}
	if err := e.del(l, p); err != nil {
		t.Fatal(err)
	}
}

// Dual stack: an IPv4 and an IPv6 range set; pods talk TCP over IPv6
// through the bridge (gateway and pod addresses skip DAD), CHECK passes.
func TestDualStack(t *testing.T) {
	e := newEnv(t)
	wc := e.weftConf("weft-ipam")
	wc["ipam"].(map[string]any)["ranges"] = [][]map[string]string{{{"subnet": e.subnet}}, {{"subnet": "fd77:1::/64"}}}
	l := e.confList("1.1.0", wc)
	a, b := e.newPod("a6"), e.newPod("b6")
	ra := e.mustAdd(l, a)
	e.mustAdd(l, b)
	var ipA6 net.IP
	for _, ip := range ra.IPs {
		if ip.Address.IP.To4() == nil {
			ipA6 = ip.Address.IP
		}
	}
	if ipA6 == nil {
		t.Fatalf("no IPv6 address in %v", ra)
	}
	hasV6Default := false
	for _, r := range ra.Routes {
		if r.Dst.String() == "::/0" {
			hasV6Default = true
		}
	}
	if !hasV6Default {
		t.Fatalf("no IPv6 default route in %v", ra.Routes)
	}
	addr := net.JoinHostPort(ipA6.String(), "8081")
	tcpEcho(t, a, addr)
	got, err := tcpDial(b, addr, "six")
	if err != nil || got != "echo:six" {
		t.Fatalf("pod b -> pod a over IPv6: %q %v", got, err)
	}
	if err := e.check(l, a); err != nil {
		t.Fatalf("CHECK: %v", err)
	}
	for _, p := range []*pod{a, b} {
		if err := e.del(l, p); err != nil {
			t.Fatal(err)
		}
	}
	if len(e.allocations()) != 0 || len(e.hostVeths()) != 0 {
		t.Fatalf("left after DEL: %v %v", e.allocations(), e.hostVeths())
	}
}

// With mtu unset the pod MTU is the node subnet file's (what the backend
// can carry); weft-ipam allocates from that file's subnet.
func TestMTUFromSubnetFile(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(t.TempDir(), "subnet.json")
	err := subnetfile.Write(path, &subnetfile.File{
		Network: netip.MustParsePrefix("10.80.0.0/16"), Subnet: netip.MustParsePrefix("10.80.3.0/24"), MTU: 1400})
	if err != nil {
		t.Fatal(err)
	}
	wc := e.weftConf("weft-ipam")
	wc["ipam"] = map[string]any{"type": "weft-ipam", "subnetFile": path, "dataDir": e.dataDir}
	l := e.confList("1.1.0", wc)
	p := e.newPod("mtu")
	r := e.mustAdd(l, p)
	if ip := podIP(t, r); !netip.MustParsePrefix("10.80.3.0/24").Contains(ip) {
		t.Fatalf("pod IP %s outside the node subnet", ip)
	}
	if err := p.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1400 {
			return fmt.Errorf("pod eth0 MTU %d, want 1400 from the subnet file", l.Attrs().MTU)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.del(l, p); err != nil {
		t.Fatal(err)
	}
	// An explicit mtu wins.
	wc["mtu"] = 1300
	l = e.confList("1.1.0", wc)
	q := e.newPod("mtu2")
	e.mustAdd(l, q)
	if err := q.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1300 {
			return fmt.Errorf("pod eth0 MTU %d, want the configured 1300", l.Attrs().MTU)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.del(l, q); err != nil {
		t.Fatal(err)
	}
}
