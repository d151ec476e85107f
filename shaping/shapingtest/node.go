// Package shapingtest is the privileged test bench of pod bandwidth
// shaping: a node netns with weft's bridge, the shaping reconciler
// serving the plugin's socket (as weftd does), pods added through libcni
// with the capability arguments containerd passes, iperf3 flows and a
// 1-byte request/response probe. The shaping tests and bench/shaping use it.
package shapingtest

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/shaping"
)

// Node is one test's node: a netns with weft's bridge (made by the
// plugin), weftd's shaping reconciler serving the local socket, and a
// libcni config chaining weft the way weftd's conflist does when it shapes.
type Node struct {
	T        testing.TB
	NS       ns.NetNS
	CNI      *libcni.CNIConfig
	List     *libcni.NetworkConfigList
	Rec      *shaping.Reconciler
	Pods     *FakePods
	Events   *FakeEvents
	Gateway  string
	Gateway6 string // dual-stack nodes only
	Bridge   string
	Socket   string
	Endpoint string
}

func NewNode(t testing.TB, cfg shaping.Config) *Node { return NewNodeWith(t, cfg, Shaped) }

// Mode is what shapes the node's pods.
type Mode int

// Modes: Weft's trees (weftd's conflist when it shapes), nothing (the
// same conflist without shaping), or the reference bandwidth plugin
// chained after weft (one TBF per pod, weftd's conflist when it does not
// shape).
const (
	Shaped Mode = iota
	Unshaped
	RefTBF
)

// NewNodeWith prepares a node whose pods are shaped as mode says.
func NewNodeWith(t testing.TB, cfg shaping.Config, mode Mode) *Node {
	t.Helper()
	return newNode(t, cfg, mode, false)
}

// NewDualStackNode is a shaping node whose pods get an IPv4 and an IPv6
// address (gateway fd78::1).
func NewDualStackNode(t testing.TB, cfg shaping.Config) *Node {
	t.Helper()
	return newNode(t, cfg, Shaped, true)
}

func newNode(t testing.TB, cfg shaping.Config, mode Mode, dual bool) *Node {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 missing (apt-get install -y iperf3)")
	}
	dir := t.TempDir()
	n := &Node{T: t, NS: testutil.NewNS(t), Pods: &FakePods{m: map[string]map[string]string{}}, Events: &FakeEvents{},
		Gateway: "10.78.0.1", Bridge: "wb" + fmt.Sprint(time.Now().UnixNano()%1e8), Socket: filepath.Join(dir, "weftd.sock"),
		Endpoint: filepath.Join(dir, "endpoints")}
	k := &shaping.Netlink{NetNS: n.NS.Path()}
	t.Cleanup(k.Close)
	if dual {
		n.Gateway6 = "fd78::1"
	}
	n.Rec = &shaping.Reconciler{Config: cfg, MTU: 1500, EndpointDir: n.Endpoint, Pods: n.Pods, Events: n.Events, Kernel: k}
	n.serve()
	paths := []string{testutil.BinDir(t)}
	if mode == RefTBF {
		paths = append(paths, testutil.RefPluginDir(t))
	}
	n.CNI = libcni.NewCNIConfigWithCacheDir(paths, filepath.Join(dir, "cache"), nil)
	n.List = n.confList(dir, mode)
	n.In(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// confList is weftd's conflist for mode: when Weft shapes, no reference
// bandwidth plugin and weft declares the bandwidth and pod-annotations
// capabilities and names the shaping socket.
func (n *Node) confList(dir string, mode Mode) *libcni.NetworkConfigList {
	ranges := [][]map[string]string{{{"subnet": "10.78.0.0/24"}}}
	if n.Gateway6 != "" {
		ranges = append(ranges, []map[string]string{{"subnet": "fd78::/64"}})
	}
	weft := map[string]any{
		"type": "weft", "bridge": n.Bridge, "isDefaultGateway": true, "endpointDir": n.Endpoint,
		"ipam": map[string]any{"type": "weft-ipam", "ranges": ranges, "dataDir": filepath.Join(dir, "ipam")},
	}
	plugins := []any{weft}
	switch mode {
	case Shaped:
		weft["shapingSocket"] = n.Socket
		weft["capabilities"] = map[string]bool{"bandwidth": true, "io.kubernetes.cri.pod-annotations": true}
	case RefTBF:
		plugins = append(plugins, map[string]any{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}})
	}
	raw := map[string]any{"cniVersion": "1.0.0", "name": "weft-shape", "plugins": plugins}
	b, _ := json.Marshal(raw)
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		n.T.Fatal(err)
	}
	return l
}

func (n *Node) serve() {
	mux := http.NewServeMux()
	for p, h := range n.Rec.Handler(nil) {
		mux.Handle(p, h)
	}
	ln, err := net.Listen("unix", n.Socket)
	if err != nil {
		n.T.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	n.T.Cleanup(func() { _ = srv.Close() })
}

func (n *Node) In(fn func() error) {
	n.T.Helper()
	if err := n.NS.Do(func(ns.NetNS) error { return fn() }); err != nil {
		n.T.Fatal(err)
	}
}

// Pod is one sandbox with the runtime config containerd would pass.
type Pod struct {
	Name string
	NS   ns.NetNS
	RT   *libcni.RuntimeConf
	IP   string
	Veth string
}

// NewPod prepares a pod whose annotations libcni passes as containerd
// does (hack/nodeemu's CapabilityArgs): every annotation in
// io.kubernetes.cri.pod-annotations and, when a bandwidth annotation is
// set, the bandwidth capability with the rates in bits/s and burst
// 4294967295 (none given).
func (n *Node) NewPod(name string, ann map[string]string) *Pod {
	p := &Pod{Name: name, NS: testutil.NewNS(n.T)}
	id := fmt.Sprintf("%064x", time.Now().UnixNano())
	caps := map[string]any{"io.kubernetes.cri.pod-annotations": ann}
	bw := map[string]uint64{}
	for k, key := range map[string]string{shaping.AnnotationIngress: "ingress", shaping.AnnotationEgress: "egress"} {
		if v, ok := ann[k]; ok {
			if r, err := shaping.ParseQuantity(v); err == nil {
				bw[key+"Rate"], bw[key+"Burst"] = r, math.MaxUint32
			}
		}
	}
	if len(bw) > 0 {
		caps["bandwidth"] = bw
	}
	p.RT = &libcni.RuntimeConf{ContainerID: id, NetNS: p.NS.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", id}, {"K8S_POD_UID", "uid-" + name}},
		CapabilityArgs: caps}
	n.Pods.Set(name, ann)
	return p
}

func (n *Node) Add(p *Pod) error {
	var res *current.Result
	var err error
	n.In(func() error {
		var r types.Result
		r, err = n.CNI.AddNetworkList(context.Background(), n.List, p.RT)
		if err == nil {
			res, err = current.NewResultFromResult(r)
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.IP = res.IPs[0].Address.IP.String()
	p.Veth = res.Interfaces[1].Name
	return nil
}

func (n *Node) MustAdd(p *Pod) {
	n.T.Helper()
	if err := n.Add(p); err != nil {
		n.T.Fatalf("ADD %s: %v", p.Name, err)
	}
}

func (n *Node) Del(p *Pod) {
	n.T.Helper()
	var err error
	n.In(func() error { err = n.CNI.DelNetworkList(context.Background(), n.List, p.RT); return nil })
	if err != nil {
		n.T.Fatalf("DEL %s: %v", p.Name, err)
	}
}

// TC runs tc in the node netns.
func (n *Node) TC(args ...string) string {
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.NS.Path(), "tc"}, args...)...).CombinedOutput()
	if err != nil {
		n.T.Fatalf("tc %v: %v\n%s", args, err, out)
	}
	return string(out)
}

// FakePods is the live pod source: annotations by pod name.
type FakePods struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

func (f *FakePods) Set(name string, ann map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[name] = ann
}

func (f *FakePods) Pod(namespace, name string) (string, map[string]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.m[name]
	return "uid-" + name, a, ok
}

// FakeEvents collects the Warning Events.
type FakeEvents struct {
	mu   sync.Mutex
	msgs []string
}

func (f *FakeEvents) Warn(namespace, name, uid, reason, message string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, name+" "+reason+": "+message)
}

func (f *FakeEvents) All() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.msgs...)
}

// Iperf runs one iperf3 flow between pod p (client) and a server in the
// node netns at port; reverse makes the node send to the pod. It returns
// the receiver's average and per-second rates in Mbit/s.
func (n *Node) Iperf(p *Pod, port int, secs int, reverse bool) (float64, []float64) {
	n.T.Helper()
	avg, per, err := n.RunIperf(p, port, secs, reverse)
	if err != nil {
		n.T.Fatal(err)
	}
	return avg, per
}

func (n *Node) RunIperf(p *Pod, port int, secs int, reverse bool) (float64, []float64, error) {
	return n.RunIperfAt(p, n.Gateway, port, secs, reverse)
}

// RunIperfAt is RunIperf with the node's server on addr (a gateway).
func (n *Node) RunIperfAt(p *Pod, addr string, port int, secs int, reverse bool) (float64, []float64, error) {
	srv := exec.Command("nsenter", "--net="+n.NS.Path(), "iperf3", "-s", "-1", "-J", "-p", fmt.Sprint(port), "-B", addr)
	if err := srv.Start(); err != nil {
		return 0, nil, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	args := []string{"--net=" + p.NS.Path(), "iperf3", "-c", addr, "-p", fmt.Sprint(port), "-t", fmt.Sprint(secs), "-J"}
	if reverse {
		args = append(args, "-R")
	} else {
		args = append(args, "--get-server-output")
	}
	var out []byte
	var err error
	for try := 0; try < 50; try++ { // until the server listens
		out, err = exec.Command("nsenter", args...).Output()
		if low := strings.ToLower(string(out)); !strings.Contains(low, "unable to connect") && !strings.Contains(low, "connection refused") {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, nil, fmt.Errorf("iperf3 %v: %v\n%s", args, err, out)
	}
	avg, per, err := parseIperf(out, reverse)
	if err == nil && avg == 0 {
		err = fmt.Errorf("iperf3 %v: nothing received:\n%s", args, out)
	}
	return avg, per, err
}

type iperfInterval struct {
	Sum struct {
		BitsPerSecond float64 `json:"bits_per_second"`
	} `json:"sum"`
}

func parseIperf(out []byte, reverse bool) (float64, []float64, error) {
	var r struct {
		Intervals []iperfInterval `json:"intervals"`
		End       struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Server struct {
			Intervals []iperfInterval `json:"intervals"`
		} `json:"server_output_json"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		return 0, nil, fmt.Errorf("iperf3 json: %v\n%s", err, out)
	}
	iv := r.Server.Intervals // the receiver's
	if reverse {
		iv = r.Intervals
	}
	var per []float64
	for _, i := range iv {
		per = append(per, i.Sum.BitsPerSecond/1e6)
	}
	return r.End.SumReceived.BitsPerSecond / 1e6, per, nil
}

func Within(got, want, tol float64) bool { return got >= want*(1-tol) && got <= want*(1+tol) }

// EchoServer answers every byte with one byte, in the node netns.
func (n *Node) EchoServer() string {
	var ln net.Listener
	n.In(func() error {
		var err error
		ln, err = net.Listen("tcp", n.Gateway+":7007")
		return err
	})
	n.T.Cleanup(func() { _ = ln.Close() })
	go func() {
		for c, err := ln.Accept(); err == nil; c, err = ln.Accept() {
			go func() { _, _ = io.Copy(c, c); _ = c.Close() }() // each byte back as it comes
		}
	}()
	return ln.Addr().String()
}

// RequestResponse sends one byte and waits for the answer, again and
// again for d, from inside podNS; it returns the round trips.
func RequestResponse(podNS ns.NetNS, addr string, d time.Duration) ([]time.Duration, error) {
	var c net.Conn
	if err := podNS.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var rtts []time.Duration
	b := []byte{'x'}
	for end := time.Now().Add(d); time.Now().Before(end); {
		start := time.Now()
		_ = c.SetDeadline(start.Add(2 * time.Second))
		if _, err := c.Write(b); err != nil {
			return rtts, err
		}
		if _, err := c.Read(b); err != nil {
			return rtts, err
		}
		rtts = append(rtts, time.Since(start))
		time.Sleep(5 * time.Millisecond)
	}
	return rtts, nil
}

// ClassRate reads the rate of the pod's class on dev from the kernel.
func (n *Node) ClassRate(dev, veth string) string {
	n.T.Helper()
	c := n.Rec.Applied().Trees[map[string]shaping.Direction{shaping.DeviceEgress: shaping.Egress, shaping.DeviceIngress: shaping.Ingress}[dev]].Class(veth)
	if c == nil {
		return ""
	}
	for _, line := range strings.Split(n.TC("class", "show", "dev", dev), "\n") {
		if strings.Contains(line, fmt.Sprintf("class htb 1:%x ", c.Minor)) {
			f := strings.Fields(line)
			for i := range f {
				if f[i] == "rate" && i+1 < len(f) {
					return f[i+1]
				}
			}
		}
	}
	return ""
}
