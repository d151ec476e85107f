package cluster

// The live backend switch (issue 11) in the local cluster: for every
// ordered pair of backends, the time from the ConfigMap update to the
// last node sending in the new encapsulation, and the datagrams a pod
// stream lost meanwhile.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/testutil"
)

// Node annotations the benchmark reads (literal: it watches the product
// from outside).
const (
	annoBackend   = "weft.dev/backend"
	annoBackends  = "weft.dev/backends"
	annoMigration = "weft.dev/migration"
)

// backendStep is one backend section and the identity nodes announce for it.
type backendStep struct{ name, section, id string }

var switchBackends = map[string]backendStep{
	"V":  {"vxlan", `{"type":"vxlan","vni":1,"port":8472}`, "vxlan"},
	"V7": {"vxlan VNI 7 port 4789", `{"type":"vxlan","vni":7,"port":4789}`, "vxlan/7/4789"},
	"U":  {"udp", `{"type":"udp","port":8285}`, "udp"},
	"A":  {"bgp Always", `{"type":"bgp","ipipMode":"Always"}`, "bgp/ipip"},
	"N":  {"bgp Never", `{"type":"bgp","ipipMode":"Never"}`, "bgp/native"},
	"C":  {"bgp CrossSubnet", `{"type":"bgp","ipipMode":"CrossSubnet"}`, "bgp/cross"},
}

// switchSequence starts on vxlan (the manifest's backend), visits every
// ordered pair of V, U, A, N, C once (an Eulerian circuit of the complete
// directed graph) and ends with the option change V -> V7 -> V.
var switchSequence = strings.Fields("U V A V N V C U A U N U C A N A C N C V V7 V")

// BenchmarkLiveSwitch: 3 nodes, two pods on nodes 1 and 2 exchanging a
// sequence-numbered UDP stream (500 datagrams/s each way) while the
// ConfigMap's backend goes through switchSequence. Per switch it logs the
// time from the ConfigMap update until every node announces the new
// identity as the one it sends with (weft.dev/backend; "sending"), until
// every node is done (only the new identity received, no migration phase;
// "done"), and the datagrams lost in each direction. One underlay subnet:
// CrossSubnet sends plain routed packets there, as Never does, but it is
// another identity, so every switch to or from it is a migration.
func BenchmarkLiveSwitch(b *testing.B) {
	testutil.RequireRoot(b)
	checkSequence(b)
	localcluster(b, "up", "--nodes", "3")
	b.Cleanup(func() { localcluster(b, "down") })
	e, clientIP, cli, srv := switchPods(b)
	ctx, stop := context.WithCancel(e.ctx)
	defer stop()
	up := testutil.StartSeqStream(b, ctx, "client->server", cli, srv, e.podIP, 5401)
	down := testutil.StartSeqStream(b, ctx, "server->client", srv, cli, clientIP, 5402)
	time.Sleep(time.Second)
	var sendings []time.Duration
	lost, sent := 0, 0
	prev := "V"
	b.ResetTimer()
	for _, k := range switchSequence {
		st := switchBackends[k]
		t0 := time.Now()
		e.setBackend(b, st.section)
		sending, done := e.waitBackend(b, st.id)
		time.Sleep(time.Second)
		t1 := time.Now().Add(-300 * time.Millisecond)
		var figs []string
		for _, s := range []*testutil.SeqStream{up, down} {
			n, l, gap, _ := s.Window(t0, t1)
			sent, lost = sent+n, lost+l
			figs = append(figs, fmt.Sprintf("%s %d/%d lost, gap %s", s.Name, l, n, gap.Round(time.Millisecond)))
		}
		b.Logf("%-15s -> %-21s sending %6s  done %6s  %s", switchBackends[prev].name, st.name,
			sending.Round(10*time.Millisecond), done.Round(10*time.Millisecond), strings.Join(figs, "; "))
		sendings = append(sendings, sending)
		prev = k
	}
	b.StopTimer()
	slices.Sort(sendings)
	b.ReportMetric(float64(sendings[len(sendings)/2].Milliseconds()), "ms-sending-median")
	b.ReportMetric(float64(sendings[len(sendings)-1].Milliseconds()), "ms-sending-max")
	b.ReportMetric(float64(lost), "datagrams-lost")
	b.ReportMetric(float64(sent), "datagrams-sent")
}

// checkSequence fails unless switchSequence covers every ordered pair of
// the five backend types and the option change both ways.
func checkSequence(b *testing.B) {
	b.Helper()
	seen := map[string]bool{}
	prev := "V"
	for _, k := range switchSequence {
		if _, ok := switchBackends[k]; !ok || k == prev {
			b.Fatalf("switch sequence: step %q after %q", k, prev)
		}
		seen[prev+">"+k] = true
		prev = k
	}
	for _, x := range strings.Fields("V U A N C") {
		for _, y := range strings.Fields("V U A N C") {
			if x != y && !seen[x+">"+y] {
				b.Fatalf("switch sequence misses %s -> %s", x, y)
			}
		}
	}
	if !seen["V>V7"] || !seen["V7>V"] {
		b.Fatal("switch sequence misses the option change")
	}
}

// switchPods creates the namespace and two pods (server on node 1, client
// on node 2) and opens their network namespaces.
func switchPods(b *testing.B) (e *env, clientIP netip.Addr, cli, srv ns.NetNS) {
	b.Helper()
	client := adminClient(b)
	e = &env{ctx: context.Background(), client: client, ns: fmt.Sprintf("switchbench-%06x", rand.IntN(1<<24))}
	nodes, err := client.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		b.Fatalf("nodes: %v", err)
	}
	e.createNamespace(b)
	ips := map[string]netip.Addr{}
	for i, name := range []string{"server", "client"} {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{NodeName: nodes.Items[i].Name, Containers: []corev1.Container{{Name: "c", Image: "weft.dev/echo:test"}}}}
		if _, err := client.CoreV1().Pods(e.ns).Create(e.ctx, pod, metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		waitFor(b, 2*time.Minute, "pod "+name+" running with an IP", func() bool {
			p, err := client.CoreV1().Pods(e.ns).Get(e.ctx, name, metav1.GetOptions{})
			if err != nil || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" {
				return false
			}
			ips[name] = netip.MustParseAddr(p.Status.PodIP)
			return true
		})
	}
	e.podIP = ips["server"]
	return e, ips["client"], e.podNetns(b, "client"), e.podNetns(b, "server")
}

// setBackend replaces the backend section of the weft ConfigMap.
func (e *env) setBackend(b *testing.B, section string) {
	b.Helper()
	cms := e.client.CoreV1().ConfigMaps("kube-system")
	cur, err := cms.Get(e.ctx, "weft", metav1.GetOptions{})
	if err != nil {
		b.Fatal(err)
	}
	var conf map[string]json.RawMessage
	if err := json.Unmarshal([]byte(cur.Data["net-conf.json"]), &conf); err != nil {
		b.Fatalf("net-conf.json: %v", err)
	}
	conf["backend"] = json.RawMessage(section)
	data, _ := json.Marshal(conf)
	cur.Data["net-conf.json"] = string(data)
	if _, err := cms.Update(e.ctx, cur, metav1.UpdateOptions{}); err != nil {
		b.Fatal(err)
	}
}

// waitBackend polls the Nodes every 20 ms and returns when every node
// first announced id as the identity it sends with, and when every node
// was done (id the only one received, no migration phase).
func (e *env) waitBackend(b *testing.B, id string) (sending, done time.Duration) {
	b.Helper()
	start := time.Now()
	for {
		list, err := e.client.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		all, fin := len(list.Items) > 0, len(list.Items) > 0
		for _, n := range list.Items {
			an := n.Annotations
			all = all && an[annoBackend] == id
			fin = fin && an[annoBackend] == id && an[annoBackends] == id && an[annoMigration] == ""
		}
		if all && sending == 0 {
			sending = time.Since(start)
		}
		if fin {
			return sending, time.Since(start)
		}
		if time.Since(start) > 2*time.Minute {
			b.Fatalf("switch to %s: not done after 2m", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
