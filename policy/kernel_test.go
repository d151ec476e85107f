package policy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"

	"github.com/weftnet/weft/policy/rules"
)

// testNode is a "node" namespace with a bridge, three "pod" namespaces on
// it (pa, pb, pc; 10.99.0.2-4) and a "remote" namespace behind a routed
// veth (10.98.0.2), standing in for traffic from other nodes.
type testNode struct {
	node, remote ns.NetNS
	pods         map[string]ns.NetNS
	bridge       string
	veth         map[string]string
	ip           map[string]string
	cfg          rules.Config
	k8sPods      []*corev1.Pod
	namespaces   []*corev1.Namespace
	eps          []endpoint.Endpoint
}

func randSuffix(t *testing.T) string {
	b := make([]byte, 3)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func sh(t *testing.T, netns string, args ...string) string {
	t.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + netns, "--"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
	return string(out)
}

func newTestNode(t *testing.T) *testNode {
	testutil.RequireRoot(t)
	sfx := randSuffix(t)
	tn := &testNode{node: testutil.NewNS(t), remote: testutil.NewNS(t), pods: map[string]ns.NetNS{},
		bridge: "wb" + sfx, veth: map[string]string{}, ip: map[string]string{}}
	tn.cfg = rules.Config{Bridge: tn.bridge, AllowMark: 0x100000}
	// br_netfilter: bridged frames must traverse iptables in this namespace.
	if _, err := os.Stat("/proc/sys/net/bridge"); err != nil {
		if out, err := exec.Command("modprobe", "br_netfilter").CombinedOutput(); err != nil {
			t.Fatalf("br_netfilter cannot load (same-node traffic would bypass policy): %v %s", err, out)
		}
	}
	sh(t, tn.node.Path(), "sh", "-c", "echo 1 > /proc/sys/net/bridge/bridge-nf-call-iptables && echo 1 > /proc/sys/net/ipv4/ip_forward")
	if got := strings.TrimSpace(sh(t, tn.node.Path(), "cat", "/proc/sys/net/bridge/bridge-nf-call-iptables")); got != "1" {
		t.Fatalf("bridge-nf-call-iptables = %s in node netns", got)
	}
	err := tn.node.Do(func(ns.NetNS) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: tn.bridge}}
		if err := netlink.LinkAdd(br); err != nil {
			return fmt.Errorf("bridge: %w", err)
		}
		if err := addrUp(br, "10.99.0.1/24"); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		return netlink.LinkSetUp(lo)
	})
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range []string{"a", "b", "c"} {
		p := testutil.NewNS(t)
		tn.pods[name] = p
		host := "wv" + sfx + name
		ip := fmt.Sprintf("10.99.0.%d", i+2)
		tn.veth[name], tn.ip[name] = host, ip
		tn.link(t, p, host, "eth0", ip+"/24", "10.99.0.1", true)
		uid := types.UID("uid-" + name + sfx)
		tn.k8sPods = append(tn.k8sPods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "t", Name: name, UID: uid, Labels: map[string]string{"pod": name}},
			Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "s", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80}}}}},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
		})
		tn.eps = append(tn.eps, endpoint.Endpoint{PodNamespace: "t", PodName: name, PodUID: string(uid), HostVeth: host,
			IfName: "eth0", IPs: []string{ip + "/24"}})
	}
	tn.link(t, tn.remote, "wr"+sfx, "eth0", "10.98.0.2/24", "10.98.0.1", false)
	tn.ip["remote"] = "10.98.0.2"
	tn.namespaces = []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "t", Labels: map[string]string{"ns": "t"}}}}
	for name, p := range tn.pods {
		serve(t, p, "0.0.0.0:80", name)
		serve(t, p, "0.0.0.0:81", name)
	}
	return tn
}

func addrUp(l netlink.Link, cidr string) error {
	a, err := netlink.ParseAddr(cidr)
	if err != nil {
		return err
	}
	if err := netlink.AddrAdd(l, a); err != nil {
		return fmt.Errorf("addr %s on %s: %w", cidr, l.Attrs().Name, err)
	}
	return netlink.LinkSetUp(l)
}

// link connects peer to the node with a veth: on the bridge (bridged) or
// routed with the node at .1 of the peer's subnet.
func (tn *testNode) link(t *testing.T, peer ns.NetNS, host, inner, cidr, gw string, bridged bool) {
	t.Helper()
	err := tn.node.Do(func(ns.NetNS) error {
		v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: inner, PeerNamespace: netlink.NsFd(int(peer.Fd()))}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("veth %s: %w", host, err)
		}
		l, err := netlink.LinkByName(host)
		if err != nil {
			return err
		}
		if bridged {
			br, err := netlink.LinkByName(tn.bridge)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(l, br); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		}
		return addrUp(l, gw+"/24")
	})
	if err != nil {
		t.Fatal(err)
	}
	err = peer.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName(inner)
		if err != nil {
			return err
		}
		if err := addrUp(l, cidr); err != nil {
			return err
		}
		lo, _ := netlink.LinkByName("lo")
		_ = netlink.LinkSetUp(lo)
		return netlink.RouteAdd(&netlink.Route{Gw: net.ParseIP(gw)})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// serve runs a TCP and a UDP echo of "name" on addr inside the namespace.
func serve(t *testing.T, n ns.NetNS, addr, name string) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	err := n.Do(func(ns.NetNS) error {
		var err error
		if ln, err = net.Listen("tcp4", addr); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", addr)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte(name))
			_ = c.Close()
		}
	}()
	go func() {
		defer wg.Done()
		buf := make([]byte, 64)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_ = k
			_, _ = pc.WriteTo([]byte(name), from)
		}
	}()
	t.Cleanup(func() { ln.Close(); pc.Close(); wg.Wait() })
}

// probe connects from namespace src to ip:port and reports whether the
// server's name came back. A probe expected to connect is retried for a
// few seconds (a loaded machine can delay the first packets); one expected
// to fail gets one attempt, which is all a wrong "allow" needs to show.
func probe(t *testing.T, src ns.NetNS, proto, ip string, port int, expectOK bool) bool {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		ok := probeOnce(t, src, proto, ip, port)
		if ok || !expectOK || time.Now().After(deadline) {
			return ok
		}
	}
}

func probeOnce(t *testing.T, src ns.NetNS, proto, ip string, port int) bool {
	t.Helper()
	ok := false
	err := src.Do(func(ns.NetNS) error {
		addr := net.JoinHostPort(ip, fmt.Sprint(port))
		c, err := net.DialTimeout(proto+"4", addr, time.Second)
		if err != nil {
			time.Sleep(100 * time.Millisecond) // refused fast: do not spin
			return nil
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(time.Second))
		if proto == "udp" {
			if _, err := c.Write([]byte("hi")); err != nil {
				return nil
			}
		}
		buf := make([]byte, 16)
		n, _ := c.Read(buf)
		ok = n > 0
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func (tn *testNode) render(pols ...*networkingv1.NetworkPolicy) *rules.State {
	return rules.Render(tn.cfg, rules.Input{Policies: pols, Pods: tn.k8sPods, Namespaces: tn.namespaces, Endpoints: tn.eps})
}

// writer returns a Writer for the node namespace: the detected backend
// when mode is "", else the given one.
func (tn *testNode) writer(t *testing.T, mode iptables.Mode) (*Writer, iptables.Runner) {
	t.Helper()
	if mode == "" {
		w, m, err := NewNodeWriter(context.Background(), tn.node.Path(), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("iptables backend detected in node netns: %s", m)
		t.Cleanup(func() { w.Close() })
		return w, iptables.Runner{Mode: m, NetNS: tn.node.Path()}
	}
	r := iptables.Runner{Mode: mode, NetNS: tn.node.Path()}
	if mode == iptables.Legacy { // set updates through the ipset tool
		return NewWriter(r, nil), r
	}
	sets, err := iptables.NewNetlinkSets(tn.node.Path()) // set swaps over netlink
	if err != nil {
		t.Fatal(err)
	}
	w := NewWriter(nodeKernel{Runner: r, NetlinkSets: sets}, nil)
	t.Cleanup(func() { w.Close() })
	return w, r
}

// onBothBackends runs f as one subtest per iptables backend, each on a
// fresh test node with a Writer for that backend, which leaves nothing of
// its own behind when the subtest ends.
func onBothBackends(t *testing.T, f func(t *testing.T, tn *testNode, w *Writer, run iptables.Runner)) {
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) {
			tn := newTestNode(t)
			w, run := tn.writer(t, mode)
			t.Cleanup(func() { _, _ = w.Apply(context.Background(), &rules.State{}, true) })
			f(t, tn, w, run)
		})
	}
}

func apply(t *testing.T, w *Writer, st *rules.State, readBack bool) ApplyStats {
	t.Helper()
	stats, err := w.Apply(context.Background(), st, readBack)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return stats
}

type expect struct {
	from, to, proto string
	port            int
	ok              bool
}

func (tn *testNode) check(t *testing.T, what string, exps []expect) {
	t.Helper()
	var wg sync.WaitGroup
	res := make([]bool, len(exps))
	for i, e := range exps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			src := tn.pods[e.from]
			if e.from == "remote" {
				src = tn.remote
			}
			res[i] = probe(t, src, e.proto, tn.ip[e.to], e.port, e.ok)
		}()
	}
	wg.Wait()
	for i, e := range exps {
		if res[i] != e.ok {
			t.Errorf("%s: %s -> %s %s/%d: connected=%v, want %v", what, e.from, e.to, e.proto, e.port, res[i], e.ok)
		}
	}
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

func itoa(i int) string { return strconv.Itoa(i) }
