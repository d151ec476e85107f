package shaping_test

import (
	"context"
	"encoding/json"
	"fmt"
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

// node is one test's node: a netns with weft's bridge (made by the
// plugin), weftd's shaping reconciler serving the local socket, and a
// libcni config chaining weft the way weftd's conflist does when it shapes.
type node struct {
	t        *testing.T
	ns       ns.NetNS
	cni      *libcni.CNIConfig
	list     *libcni.NetworkConfigList
	rec      *shaping.Reconciler
	pods     *fakePods
	events   *fakeEvents
	gateway  string
	bridge   string
	socket   string
	endpoint string
}

func newNode(t *testing.T, cfg shaping.Config) *node {
	t.Helper()
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Fatal("iperf3 missing (apt-get install -y iperf3)")
	}
	dir := t.TempDir()
	n := &node{t: t, ns: testutil.NewNS(t), pods: &fakePods{m: map[string]map[string]string{}}, events: &fakeEvents{},
		gateway: "10.78.0.1", bridge: "wb" + fmt.Sprint(time.Now().UnixNano()%1e8), socket: filepath.Join(dir, "weftd.sock"),
		endpoint: filepath.Join(dir, "endpoints")}
	n.rec = &shaping.Reconciler{Config: cfg, MTU: 1500, EndpointDir: n.endpoint, Pods: n.pods, Events: n.events,
		Kernel: &shaping.Netlink{NetNS: n.ns.Path()}}
	n.serve()
	n.cni = libcni.NewCNIConfigWithCacheDir([]string{testutil.BinDir(t)}, filepath.Join(dir, "cache"), nil)
	n.list = n.confList(dir)
	n.in(func() error {
		lo, err := netlink.LinkByName("lo")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(lo)
	})
	return n
}

// confList is weftd's conflist shape when Weft shapes: no reference
// bandwidth plugin; weft declares the bandwidth and pod-annotations
// capabilities and names the shaping socket.
func (n *node) confList(dir string) *libcni.NetworkConfigList {
	raw := map[string]any{"cniVersion": "1.0.0", "name": "weft-shape", "plugins": []any{map[string]any{
		"type": "weft", "bridge": n.bridge, "isDefaultGateway": true,
		"endpointDir": n.endpoint, "shapingSocket": n.socket,
		"capabilities": map[string]bool{"bandwidth": true, "io.kubernetes.cri.pod-annotations": true},
		"ipam": map[string]any{"type": "weft-ipam", "ranges": [][]map[string]string{{{"subnet": "10.78.0.0/24"}}},
			"dataDir": filepath.Join(dir, "ipam")},
	}}}
	b, _ := json.Marshal(raw)
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		n.t.Fatal(err)
	}
	return l
}

func (n *node) serve() {
	mux := http.NewServeMux()
	for p, h := range n.rec.Handler(nil) {
		mux.Handle(p, h)
	}
	ln, err := net.Listen("unix", n.socket)
	if err != nil {
		n.t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go func() { _ = srv.Serve(ln) }()
	n.t.Cleanup(func() { _ = srv.Close() })
}

func (n *node) in(fn func() error) {
	n.t.Helper()
	if err := n.ns.Do(func(ns.NetNS) error { return fn() }); err != nil {
		n.t.Fatal(err)
	}
}

// pod is one sandbox with the runtime config containerd would pass.
type pod struct {
	name string
	ns   ns.NetNS
	rt   *libcni.RuntimeConf
	ip   string
	veth string
}

// newPod prepares a pod whose annotations libcni passes as containerd
// does (hack/nodeemu's CapabilityArgs): every annotation in
// io.kubernetes.cri.pod-annotations and, when a bandwidth annotation is
// set, the bandwidth capability with the rates in bits/s and burst
// 4294967295 (none given).
func (n *node) newPod(name string, ann map[string]string) *pod {
	p := &pod{name: name, ns: testutil.NewNS(n.t)}
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
	p.rt = &libcni.RuntimeConf{ContainerID: id, NetNS: p.ns.Path(), IfName: "eth0",
		Args: [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "default"}, {"K8S_POD_NAME", name},
			{"K8S_POD_INFRA_CONTAINER_ID", id}, {"K8S_POD_UID", "uid-" + name}},
		CapabilityArgs: caps}
	n.pods.set(name, ann)
	return p
}

func (n *node) add(p *pod) error {
	var res *current.Result
	var err error
	n.in(func() error {
		var r types.Result
		r, err = n.cni.AddNetworkList(context.Background(), n.list, p.rt)
		if err == nil {
			res, err = current.NewResultFromResult(r)
		}
		return nil
	})
	if err != nil {
		return err
	}
	p.ip = res.IPs[0].Address.IP.String()
	p.veth = res.Interfaces[1].Name
	return nil
}

func (n *node) mustAdd(p *pod) {
	n.t.Helper()
	if err := n.add(p); err != nil {
		n.t.Fatalf("ADD %s: %v", p.name, err)
	}
}

func (n *node) del(p *pod) {
	n.t.Helper()
	var err error
	n.in(func() error { err = n.cni.DelNetworkList(context.Background(), n.list, p.rt); return nil })
	if err != nil {
		n.t.Fatalf("DEL %s: %v", p.name, err)
	}
}

// tc runs tc in the node netns.
func (n *node) tc(args ...string) string {
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.ns.Path(), "tc"}, args...)...).CombinedOutput()
	if err != nil {
		n.t.Fatalf("tc %v: %v\n%s", args, err, out)
	}
	return string(out)
}

type fakePods struct {
	mu sync.Mutex
	m  map[string]map[string]string
}

func (f *fakePods) set(name string, ann map[string]string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.m[name] = ann
}

func (f *fakePods) Pod(namespace, name string) (string, map[string]string, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, ok := f.m[name]
	return "uid-" + name, a, ok
}

type fakeEvents struct {
	mu   sync.Mutex
	msgs []string
}

func (f *fakeEvents) Warn(namespace, name, uid, reason, message string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.msgs = append(f.msgs, name+" "+reason+": "+message)
}

func (f *fakeEvents) all() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.msgs...)
}

// iperf runs one iperf3 flow between pod p (client) and a server in the
// node netns at port; reverse makes the node send to the pod. It returns
// the receiver's average and per-second rates in Mbit/s.
func (n *node) iperf(p *pod, port int, secs int, reverse bool) (float64, []float64) {
	n.t.Helper()
	avg, per, err := n.runIperf(p, port, secs, reverse)
	if err != nil {
		n.t.Fatal(err)
	}
	return avg, per
}

func (n *node) runIperf(p *pod, port int, secs int, reverse bool) (float64, []float64, error) {
	srv := exec.Command("nsenter", "--net="+n.ns.Path(), "iperf3", "-s", "-1", "-J", "-p", fmt.Sprint(port), "-B", n.gateway)
	if err := srv.Start(); err != nil {
		return 0, nil, err
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	args := []string{"--net=" + p.ns.Path(), "iperf3", "-c", n.gateway, "-p", fmt.Sprint(port), "-t", fmt.Sprint(secs), "-J"}
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

func within(got, want, tol float64) bool { return got >= want*(1-tol) && got <= want*(1+tol) }

// A pod annotated 10M in both directions, through libcni: each direction
// measures 10 Mbit/s ±10% over 6 s, the first second at most 12 Mbit
// (the runtime's 4294967295-bit burst is bounded by maxBurst); DEL removes
// its classes and filters.
func TestPodRateBothDirections(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.PodCeil = 10_000_000 // no borrowing: the pod gets exactly its rate
	n := newNode(t, cfg)
	p := n.newPod("ten", map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"})
	n.mustAdd(p)
	for _, rev := range []bool{false, true} {
		avg, per := n.iperf(p, map[bool]int{false: 5201, true: 5202}[rev], 6, rev)
		dir := map[bool]string{false: "egress", true: "ingress"}[rev]
		t.Logf("%s: %.2f Mbit/s, per second %v", dir, avg, per)
		if !within(avg, 10, 0.10) {
			t.Errorf("%s: %.2f Mbit/s, want 10 ±10%%\n%s%s", dir, avg, n.tc("-s", "qdisc", "show", "dev", shaping.DeviceEgress), n.tc("-s", "class", "show", "dev", shaping.DeviceIngress))
		}
		if len(per) == 0 || per[0] > 12 {
			t.Errorf("%s: first second %v Mbit, want ≤ 12", dir, per)
		}
	}
	n.del(p)
	for _, dev := range []string{shaping.DeviceEgress, shaping.DeviceIngress} {
		if out := n.tc("class", "show", "dev", dev); strings.Contains(out, "parent 1:1 ") {
			t.Errorf("after DEL, %s still has pod classes:\n%s", dev, out)
		}
		if out := n.tc("filter", "show", "dev", dev); strings.Contains(out, "flowid") {
			t.Errorf("after DEL, %s still has address filters:\n%s", dev, out)
		}
	}
}
