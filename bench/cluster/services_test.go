package cluster

// Service traffic through Weft in the local cluster (real kube-proxy):
// pod -> ClusterIP -> pod across nodes against pod -> pod directly, in the
// same run (issue 12).

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
)

const (
	iperfPort = 5201
	rrPort    = 7100
	seconds   = 3
	// Interleaved rounds per invocation, independent of b.N (make bench
	// runs -benchtime 1x); the medians are reported.
	rounds = 5
)

// BenchmarkClusterIPvsDirect: a server pod on node 1 and a client pod on
// node 2 (VXLAN between them), a ClusterIP Service selecting the server
// for the iperf3 port and the RR port, kube-proxy in iptables mode.
// Rounds take turns: direct to the pod IP, then through the ClusterIP,
// single-stream TCP throughput and 1-byte TCP request/response rate each;
// the medians and the ratios ClusterIP/direct are reported.
func BenchmarkClusterIPvsDirect(b *testing.B) {
	testutil.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatal("iperf3 missing: run make deps")
	}
	localcluster(b, "down")
	b.Cleanup(func() { localcluster(b, "down") })
	localcluster(b, "up", "--nodes", "3")
	e := setup(b)
	cli, srv := e.podNetns(b, "client"), e.podNetns(b, "server")
	e.waitService(b, cli, srv)
	all := map[string][]nettopo.Figures{}
	for round := 0; round < max(rounds, b.N); round++ {
		for _, path := range []struct {
			name string
			dst  netip.Addr
		}{{"direct", e.podIP}, {"clusterip", e.svcIP}} {
			f := nettopo.Figures{
				G1: nettopo.IPerf3Via(b, cli, srv, e.podIP, netip.AddrPortFrom(path.dst, iperfPort), 1, seconds),
				RR: nettopo.RRVia(b, cli, srv, netip.AddrPortFrom(e.podIP, rrPort), netip.AddrPortFrom(path.dst, rrPort), seconds),
			}
			all[path.name] = append(all[path.name], f)
		}
	}
	b.StopTimer()
	med := map[string]nettopo.Figures{}
	for name, fs := range all {
		var g1, rr []float64
		for _, f := range fs {
			g1, rr = append(g1, f.G1), append(rr, f.RR)
		}
		med[name] = nettopo.Figures{G1: nettopo.Median(g1), RR: nettopo.Median(rr)}
		b.ReportMetric(med[name].G1, name+"-1stream-Gbit/s")
		b.ReportMetric(med[name].RR, name+"-rr/s")
		b.Logf("%s: Gbit/s %.2f, RR/s %.0f", name, g1, rr)
	}
	b.ReportMetric(med["clusterip"].G1/med["direct"].G1, "ratio-Gbit/s")
	b.ReportMetric(med["clusterip"].RR/med["direct"].RR, "ratio-rr/s")
	if load, err := os.ReadFile("/proc/loadavg"); err == nil {
		b.Logf("load average: %s", strings.TrimSpace(string(load)))
	}
}

type env struct {
	ctx    context.Context
	client kubernetes.Interface
	ns     string
	podIP  netip.Addr
	svcIP  netip.Addr
}

// createNamespace creates e.ns (deleted at cleanup) and waits for its
// default ServiceAccount, which pods need to be admitted.
func (e *env) createNamespace(b *testing.B) {
	b.Helper()
	if _, err := e.client.CoreV1().Namespaces().Create(e.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns}}, metav1.CreateOptions{}); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.client.CoreV1().Namespaces().Delete(context.Background(), e.ns, metav1.DeleteOptions{}) })
	waitFor(b, time.Minute, "default ServiceAccount", func() bool {
		_, err := e.client.CoreV1().ServiceAccounts(e.ns).Get(e.ctx, "default", metav1.GetOptions{})
		return err == nil
	})
}

// setup creates the namespace, the two pods (on the first two nodes) and
// the Service, and waits for both pods to run with an IP.
func setup(b *testing.B) *env {
	b.Helper()
	client := adminClient(b)
	e := &env{ctx: context.Background(), client: client, ns: fmt.Sprintf("svcbench-%06x", rand.IntN(1<<24))}
	nodes, err := client.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		b.Fatalf("nodes: %v (%d)", err, len(nodes.Items))
	}
	e.createNamespace(b)
	// No container ports: the node emulator opens no echo sockets, so the
	// benchmark's own servers own 5201 and 7100 in the server's netns.
	for i, name := range []string{"server", "client"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"role": name}},
			Spec: corev1.PodSpec{NodeName: nodes.Items[i].Name, Containers: []corev1.Container{{Name: "c", Image: "weft.dev/echo:test"}}}}
		if _, err := client.CoreV1().Pods(e.ns).Create(e.ctx, pod, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "perf"}, Spec: corev1.ServiceSpec{
		Selector: map[string]string{"role": "server"},
		Ports: []corev1.ServicePort{
			{Name: "iperf", Port: iperfPort, TargetPort: intstr.FromInt32(iperfPort), Protocol: corev1.ProtocolTCP},
			{Name: "rr", Port: rrPort, TargetPort: intstr.FromInt32(rrPort), Protocol: corev1.ProtocolTCP},
		}}}
	got, err := client.CoreV1().Services(e.ns).Create(e.ctx, svc, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	e.svcIP = netip.MustParseAddr(got.Spec.ClusterIP)
	for _, name := range []string{"server", "client"} {
		waitFor(b, 2*time.Minute, "pod "+name+" running with an IP", func() bool {
			p, err := client.CoreV1().Pods(e.ns).Get(e.ctx, name, metav1.GetOptions{})
			if err != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				return false
			}
			if name == "server" {
				e.podIP = netip.MustParseAddr(p.Status.PodIP)
			}
			return true
		})
	}
	b.Logf("server %s on %s, client on %s, ClusterIP %s", e.podIP, nodes.Items[0].Name, nodes.Items[1].Name, e.svcIP)
	return e
}

// podNetns opens pod NAME's network namespace: `hack/localcluster exec`
// runs sleep there (nsenter execs in place), and /proc/PID/ns/net is it.
func (e *env) podNetns(b *testing.B, name string) ns.NetNS {
	b.Helper()
	root := testutil.RepoRoot()
	cmd := exec.Command(filepath.Join(root, "hack", "localcluster"), "exec", e.ns+"/"+name, "--", "sleep", "3600")
	cmd.Dir = root
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	self, _ := os.Readlink("/proc/self/ns/net")
	path := fmt.Sprintf("/proc/%d/ns/net", cmd.Process.Pid)
	waitFor(b, 20*time.Second, "exec into "+name, func() bool {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", cmd.Process.Pid))
		cur, _ := os.Readlink(path)
		return strings.TrimSpace(string(comm)) == "sleep" && cur != "" && cur != self
	})
	h, err := ns.GetNS(path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { h.Close() })
	return h
}

// waitService waits until kube-proxy has programmed the Service: a
// connection from the client to ClusterIP:rrPort reaches a listener on the
// server pod's IP.
func (e *env) waitService(b *testing.B, cli, srv ns.NetNS) {
	b.Helper()
	var ln net.Listener
	if err := srv.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(e.podIP, rrPort).String())
		return err
	}); err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	waitFor(b, time.Minute, "ClusterIP "+e.svcIP.String()+" to reach the server", func() bool {
		var c net.Conn
		err := cli.Do(func(ns.NetNS) error {
			var err error
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(e.svcIP, rrPort).String(), time.Second)
			return err
		})
		if err == nil {
			c.Close()
		}
		return err == nil
	})
}

func waitFor(b *testing.B, timeout time.Duration, what string, cond func() bool) {
	b.Helper()
	for start := time.Now(); !cond(); time.Sleep(200 * time.Millisecond) {
		if time.Since(start) > timeout {
			b.Fatalf("waited %s for %s", timeout, what)
		}
	}
}
