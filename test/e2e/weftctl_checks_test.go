package e2e

import (
	"fmt"
	"net/http"
	"os/exec"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weftnet/weft/internal/nodeapi"
)

// checkWeftctl is issue 13's end-to-end check in TestNetworkPolicy's
// cluster (its 9 pods, no policy left): weftctl status, ipam, ipam
// release, connectivity in table and JSON; a node whose weftd is stopped;
// 401 and 403 from the operational API; /metrics with the documented
// series.
func (e *polEnv) checkWeftctl(w *weftctl) {
	t := e.t
	nodes := map[string]*corev1.Node{}
	for _, n := range e.nodes {
		node, err := e.client.CoreV1().Nodes().Get(e.ctx, n, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		nodes[n] = node
	}
	e.checkStatus(w, nodes)
	e.checkIPAM(w, nodes)
	e.checkConnectivity(w)
	e.checkAccess(nodes)
	e.checkMetrics(nodes)
	e.checkStopped(w)
}

type statusRow struct {
	Node, PodCIDR, Backend, Error string
	Decapsulates                  []string
	Reachable, Ready              bool
	Reasons                       []string
}

func (e *polEnv) checkStatus(w *weftctl, nodes map[string]*corev1.Node) {
	t := e.t
	var st struct{ Nodes []statusRow }
	w.json(e.ctx, &st, 0, "status")
	if len(st.Nodes) != len(nodes) {
		t.Fatalf("status: %d nodes, want %d", len(st.Nodes), len(nodes))
	}
	for _, r := range st.Nodes {
		n := nodes[r.Node]
		if n == nil || r.PodCIDR != n.Spec.PodCIDR || r.Backend != "vxlan" || !r.Reachable || !r.Ready ||
			len(r.Decapsulates) == 0 || r.Decapsulates[0] != "vxlan" {
			t.Errorf("status row %+v: want the node's podCIDR, backend vxlan decapsulating vxlan, reachable and ready", r)
		}
	}
	out, errs, code := w.run(e.ctx, "status")
	if code != 0 || !strings.HasPrefix(out, "NODE") {
		t.Errorf("status table: exit %d: %s%s", code, errs, out)
	}
	for name, n := range nodes {
		if !lineWith(out, name, n.Spec.PodCIDR, "vxlan", "true") {
			t.Errorf("status table has no ready line for %s %s:\n%s", name, n.Spec.PodCIDR, out)
		}
	}
}

// lineWith reports whether one line of out has every field.
func lineWith(out string, fields ...string) bool {
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		all := true
		for _, want := range fields {
			found := false
			for _, x := range f {
				found = found || x == want
			}
			all = all && found
		}
		if all {
			return true
		}
	}
	return false
}

type ipamNode struct {
	Node        string
	Reachable   bool
	Leaked      int
	Allocations []struct {
		IP, ContainerID, PodNamespace, PodName string
		Leaked                                 bool
	}
}

func (e *polEnv) ipamRows(w *weftctl) map[string]ipamNode {
	var res struct{ Nodes []ipamNode }
	w.json(e.ctx, &res, 0, "ipam")
	out := map[string]ipamNode{}
	for _, n := range res.Nodes {
		out[n.Node] = n
	}
	return out
}

// checkIPAM: every test pod's address is listed on its node with the pod
// and not leaked; an allocation the test leaves without a pod is leaked;
// release asks first, refuses on "n", frees it with --yes.
func (e *polEnv) checkIPAM(w *weftctl, nodes map[string]*corev1.Node) {
	t := e.t
	rows := e.ipamRows(w)
	for p, ip := range e.ips {
		pod, err := e.client.CoreV1().Pods(e.ns(p.ns)).Get(e.ctx, p.pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for _, a := range rows[pod.Spec.NodeName].Allocations {
			if a.IP == ip {
				found = a.PodNamespace == e.ns(p.ns) && a.PodName == p.pod && !a.Leaked
			}
		}
		if !found {
			t.Errorf("ipam: %s (%s) not listed as in use by its pod on %s: %+v", p, ip, pod.Spec.NodeName, rows[pod.Spec.NodeName])
		}
	}
	node := e.nodes[0]
	leak := leakAddress(t, e.ctx, node, nodes[node].Spec.PodCIDR)
	rows = e.ipamRows(w)
	leaked := false
	for _, a := range rows[node].Allocations {
		leaked = leaked || a.IP == leak && a.Leaked
	}
	if !leaked || rows[node].Leaked != 1 {
		t.Errorf("ipam: the address %s left without a pod is not the one leaked address of %s: %+v", leak, node, rows[node])
	}
	out, _, code := w.run(e.ctx, "ipam")
	if !lineWith(out, node, leak, "leaked") || code != 0 {
		t.Errorf("ipam table: exit %d, no leaked line for %s:\n%s", code, leak, out)
	}
	cmd := exec.CommandContext(e.ctx, w.bin, "--kubeconfig", w.kubeconfig, "ipam", "release", "--node", node, leak)
	cmd.Stdin = strings.NewReader("n\n")
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "[y/N]") {
		t.Errorf("ipam release answered n: %v: %s", err, b)
	}
	if r := e.ipamRows(w); r[node].Leaked != 1 {
		t.Errorf("ipam release without confirmation freed the address")
	}
	if out, errs, code := w.run(e.ctx, "ipam", "release", "--node", node, leak, "--yes"); code != 0 || !strings.Contains(out, "released "+leak) {
		t.Errorf("ipam release --yes: exit %d: %s%s", code, out, errs)
	}
	rows = e.ipamRows(w)
	for _, a := range rows[node].Allocations {
		if a.IP == leak {
			t.Errorf("ipam: %s still allocated after release", leak)
		}
	}
	// A pod's own address is not leaked: release refuses it.
	a := e.ips[pp{"x", "a"}]
	if _, errs, code := w.run(e.ctx, "ipam", "release", "--node", node, a, "--yes"); code == 0 || !strings.Contains(errs, "not leaked") {
		t.Errorf("ipam release of x/a's address %s: exit %d: %s", a, code, errs)
	}
}

type probeRow struct {
	From, To, Port, Reply, Reason, Error string
	Allowed                              bool
}

// checkConnectivity: the matrix of namespace x, open and then under a
// default-deny ingress policy, run from the pods' nodes.
func (e *polEnv) checkConnectivity(w *weftctl) {
	t := e.t
	matrix := func(name string, want func(f, to string) bool) {
		var res struct{ Probes []probeRow }
		deadline := time.Now().Add(30 * time.Second)
		for {
			w.json(e.ctx, &res, 0, "connectivity", "-n", e.ns("x"), "--port", "80/tcp,81/udp")
			bad := []string{}
			for _, r := range res.Probes {
				if r.Error != "" || r.Allowed != want(r.From, r.To) || r.Allowed && r.Reply != strings.TrimPrefix(r.To, e.ns("x")+"/") {
					bad = append(bad, fmt.Sprintf("%+v", r))
				}
			}
			if len(res.Probes) == 18 && len(bad) == 0 {
				t.Logf("connectivity %s: 18 probes as expected", name)
				return
			}
			if time.Now().After(deadline) {
				t.Errorf("connectivity %s: %d probes, wrong: %v", name, len(res.Probes), bad)
				return
			}
			time.Sleep(time.Second)
		}
	}
	matrix("open", func(string, string) bool { return true })
	e.apply(netpol("x", "deny", nil, ingress))
	matrix("default deny ingress", func(f, to string) bool { return f == to })
	out, _, code := w.run(e.ctx, "connectivity", "-n", e.ns("x"), "--port", "80/tcp")
	if code != 0 || !lineWith(out, e.ns("x")+"/a", e.ns("x")+"/b", "80/tcp", "blocked") || !lineWith(out, e.ns("x")+"/a", e.ns("x")+"/a", "80/tcp", "ok") {
		t.Errorf("connectivity table: exit %d:\n%s", code, out)
	}
	// One flow's table names the rule that dropped it, on the destination's node.
	out, _, code = w.run(e.ctx, "policy", "trace", "--from", e.ns("y")+"/a", "--to", e.ns("x")+"/b", "--port", "80/tcp")
	if code != 0 || !lineWith(out, e.ns("y")+"/a", e.ns("x")+"/b", "80/tcp", "deny") || !strings.Contains(out, "on "+e.nodes[1]+" (destination pod there): drop") {
		t.Errorf("policy trace table: exit %d:\n%s", code, out)
	}
	e.deleteAll()
}

// checkAccess: weftctl shows weftd only short-lived tokens of the
// manifest's weft-ctl-* ServiceAccounts bound to weftd's audience, so a
// ServiceAccount that may read pods and nodes but not create such a token
// gets the apiserver's 403 at the TokenRequest for every node; one bound to
// weftctl-view and weftctl-reader gets the state. Directly on the node's
// port: no token, a bad one and an apiserver token (even of that reader)
// 401; a weftd-audience token of a ServiceAccount without weft-reader 403;
// weftctl's reader token 200. That token is refused by the apiserver.
func (e *polEnv) checkAccess(nodes map[string]*corev1.Node) {
	t := e.t
	ns := e.ns("x")
	noKC, _ := serviceAccount(t, e.ctx, e.client, ns, "noperm", []string{"weftctl-view"}, nil)
	rdKC, rdTok := serviceAccount(t, e.ctx, e.client, ns, "reader", []string{"weftctl-view"}, []string{"weftctl-reader"})
	no := &weftctl{t: t, bin: e.ctl.bin, kubeconfig: noKC}
	var st struct{ Nodes []statusRow }
	no.json(e.ctx, &st, 1, "status")
	for _, r := range st.Nodes {
		if r.Reachable || !strings.Contains(r.Error, "403") || !strings.Contains(r.Error, "serviceaccounts/token") {
			t.Errorf("status as a ServiceAccount that may not create weftctl's token: %+v, want the apiserver's 403", r)
		}
	}
	rd := &weftctl{t: t, bin: e.ctl.bin, kubeconfig: rdKC}
	rd.json(e.ctx, &st, 0, "status")
	for _, r := range st.Nodes {
		if !r.Reachable || !r.Ready {
			t.Errorf("status as weftctl-reader: %+v", r)
		}
	}
	noAud := audienceToken(t, e.ctx, e.client, ns, "noperm")
	ctlTok := audienceToken(t, e.ctx, e.client, "kube-system", nodeapi.ReaderServiceAccount)
	n := nodes[e.nodes[1]]
	for _, c := range []struct {
		what, tok string
		want      int
	}{{"no token", "", http.StatusUnauthorized}, {"a bad token", "not-a-token", http.StatusUnauthorized},
		{"the reader's apiserver token", rdTok, http.StatusUnauthorized}, {"the admin's token", adminToken(t), http.StatusUnauthorized},
		{"a weftd token without weft-reader", noAud, http.StatusForbidden}, {"weftctl's reader token", ctlTok, http.StatusOK}} {
		for _, path := range []string{nodeapi.NodePath, nodeapi.MetricsPath} {
			code, body, err := httpsInNode(n.Name, internalIP(n), path, c.tok)
			if err != nil || code != c.want {
				t.Errorf("GET %s on %s with %s: %d %v %.200s, want %d", path, n.Name, c.what, code, err, body, c.want)
			}
		}
	}
	// A weftd token seen on a node is worth nothing at the apiserver.
	cfg := rest.AnonymousClientConfig(adminRESTConfig(t))
	cfg.BearerToken = ctlTok
	if c, err := kubernetes.NewForConfig(cfg); err != nil {
		t.Error(err)
	} else if _, err := c.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{}); !apierrors.IsUnauthorized(err) {
		t.Errorf("weftctl's weftd token at the apiserver: %v, want 401", err)
	}
	// Probes stay open on the health port; /metrics is not there.
	if code, _, err := nodeGet(n.Name, internalIP(n), "/readyz"); err != nil || code != 200 {
		t.Errorf("/readyz on the health port: %d %v", code, err)
	}
	if code, _, err := nodeGet(n.Name, internalIP(n), "/metrics"); err != nil || code != 404 {
		t.Errorf("/metrics on the open health port: %d %v, want 404", code, err)
	}
}

// checkMetrics: after the pods were created and policies applied, the
// documented series exist on every node with sane values.
func (e *polEnv) checkMetrics(nodes map[string]*corev1.Node) {
	t := e.t
	for name, n := range nodes {
		body, err := scrapeMetrics(t, name, internalIP(n))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		atLeast := map[string]float64{
			`weft_cni_request_duration_seconds_count{op="ADD"}`: 3, // the 9 pods: 3 per node
			`weft_policy_sync_seconds_count{phase="apply"}`:     1,
			`weft_policy_pod_programmed_seconds_count`:          3,
			`weft_subnet_lease_held`:                            1,
			`weft_peers`:                                        2,
			`weft_ready`:                                        1,
			`weft_encap_packets_total{backend="vxlan",device="weft.vxlan",direction="tx"}`: 1,
			`weft_encap_packets_total{backend="vxlan",device="weft.vxlan",direction="rx"}`: 1,
			`weft_subnet_info{network="10.244.0.0/16",subnet="` + n.Spec.PodCIDR + `"}`:    1,
		}
		for s, min := range atLeast {
			if v := metricValue(body, s); v < min {
				t.Errorf("%s: %s = %v, want >= %v", name, s, v, min)
			}
		}
		for _, s := range []string{`weft_policy_sync_errors_total`, `weft_policy_unenforceable`, `weft_backend_converge_seconds_count`,
			`weft_cni_request_duration_seconds_count{op="DEL"}`} {
			if metricValue(body, s) < 0 {
				t.Errorf("%s: series %s missing", name, s)
			}
		}
		if sum := metricValue(body, `weft_cni_request_duration_seconds_sum{op="ADD"}`); sum <= 0 || sum > 60*metricValue(body, `weft_cni_request_duration_seconds_count{op="ADD"}`) {
			t.Errorf("%s: CNI ADD latency sum %v not sane", name, sum)
		}
	}
}

// checkStopped: with one node's weftd frozen, status and ipam still show
// the other nodes, name the silent one, and exit 1, in table and JSON.
func (e *polEnv) checkStopped(w *weftctl) {
	t := e.t
	stopped := e.nodes[2]
	thaw := stopWeftd(t, stopped)
	defer thaw()
	var st struct{ Nodes []statusRow }
	w.json(e.ctx, &st, 1, "status", "--node-timeout", "3s")
	for _, r := range st.Nodes {
		if (r.Node == stopped) == r.Reachable || r.Node != stopped && !r.Ready || r.Node == stopped && r.Error == "" {
			t.Errorf("status with %s's weftd stopped: %+v", stopped, r)
		}
	}
	out, errs, code := w.run(e.ctx, "status", "--node-timeout", "3s")
	if code != 1 || !lineWith(out, stopped, "unknown") || !lineWith(out, e.nodes[0], "true") || !strings.Contains(out, "weftd not answering") {
		t.Errorf("status table with %s stopped: exit %d:\n%s%s", stopped, code, out, errs)
	}
	var ip struct{ Nodes []ipamNode }
	w.json(e.ctx, &ip, 1, "ipam", "--node-timeout", "3s")
	for _, n := range ip.Nodes {
		if (n.Node == stopped) == n.Reachable || n.Node != stopped && len(n.Allocations) < 3 {
			t.Errorf("ipam with %s stopped: %+v", stopped, n)
		}
	}
	thaw()
}
