package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/testutil"
)

// Services and DNS through Weft (issue 12), with the cluster's real
// kube-proxy and CoreDNS. One cluster: every case runs in kube-proxy's
// iptables mode, then the same cases again after the cluster switched
// kube-proxy to nftables in place (hack/localcluster up --proxy-mode
// nftables replaces the kube-proxy pods).
//
// Pods are weft.dev/testserver (a real program in the pod's netns with
// the pod's resolv.conf): bk-N backends (app=echo) on node N, cl-N
// clients on node N, and cl-2b, a second client on node 2.

const (
	svcPort     = 80
	hostUnderIP = "172.18.0.1" // the host's address on the underlay
	apiSvcIP    = "10.96.0.1"
)

type svcEnv struct {
	t      *testing.T
	ctx    context.Context
	client kubernetes.Interface
	ns     string
	nodes  []string
	nodeIP map[string]string
	podIP  map[string]string // pod name -> IP
	pods   map[string]string // pod name -> node
	svcIP  map[string]string // service name -> ClusterIP
	bin    string
}

func (s *svcEnv) ref(pod string) string { return s.ns + "/" + pod }

func testServerPod(name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
			Name: "srv", Image: "weft.dev/testserver:v1",
			Args: []string{"serve", "--name", name, "--tcp", "80", "--udp", "80"},
			Ports: []corev1.ContainerPort{
				{Name: "tcp", ContainerPort: svcPort, Protocol: corev1.ProtocolTCP},
				{Name: "udp", ContainerPort: svcPort, Protocol: corev1.ProtocolUDP},
			},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(svcPort)}},
				PeriodSeconds: 1},
		}}},
	}
}

func service(name string, sel map[string]string, typ corev1.ServiceType, local bool) *corev1.Service {
	s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: corev1.ServiceSpec{
		Selector: sel, Type: typ,
		Ports: []corev1.ServicePort{
			{Name: "tcp", Port: svcPort, TargetPort: intstr.FromInt32(svcPort), Protocol: corev1.ProtocolTCP},
			{Name: "udp", Port: svcPort, TargetPort: intstr.FromInt32(svcPort), Protocol: corev1.ProtocolUDP},
		},
	}}
	if local {
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}
	return s
}

func (s *svcEnv) setup() {
	t := s.t
	nl, err := s.client.CoreV1().Nodes().List(s.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.nodeIP = map[string]string{}
	for _, n := range nl.Items {
		s.nodes = append(s.nodes, n.Name)
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				s.nodeIP[n.Name] = a.Address
			}
		}
	}
	sort.Strings(s.nodes)
	if len(s.nodes) < 3 {
		t.Fatalf("need 3 nodes, have %v", s.nodes)
	}
	if _, err := s.client.CoreV1().Namespaces().Create(s.ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: s.ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.client.CoreV1().Namespaces().Delete(context.Background(), s.ns, metav1.DeleteOptions{}) })
	s.pods = map[string]string{}
	for i, n := range s.nodes[:3] {
		s.pods[fmt.Sprintf("bk-%d", i+1)] = n
		s.pods[fmt.Sprintf("cl-%d", i+1)] = n
	}
	s.pods["cl-2b"] = s.nodes[1]
	for name, node := range s.pods {
		labels := map[string]string{"pod": name}
		if strings.HasPrefix(name, "bk-") {
			labels["app"] = "echo"
		}
		if name == "bk-1" {
			labels["solo"] = "yes"
		}
		if name == "bk-2" {
			labels["guarded"] = "yes"
		}
		if name == "cl-1" || name == "cl-2" {
			labels["friend"] = "yes"
		}
		if _, err := s.client.CoreV1().Pods(s.ns).Create(s.ctx, testServerPod(name, node, labels), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	svcs := []*corev1.Service{
		service("echo", map[string]string{"app": "echo"}, corev1.ServiceTypeClusterIP, false),
		service("solo", map[string]string{"solo": "yes"}, corev1.ServiceTypeClusterIP, false),
		service("guarded", map[string]string{"guarded": "yes"}, corev1.ServiceTypeClusterIP, false),
		service("empty", map[string]string{"app": "nobody"}, corev1.ServiceTypeClusterIP, false),
		service("np-cluster", map[string]string{"app": "echo"}, corev1.ServiceTypeNodePort, false),
		service("np-local", map[string]string{"app": "echo"}, corev1.ServiceTypeNodePort, true),
	}
	s.svcIP = map[string]string{}
	for _, svc := range svcs {
		got, err := s.client.CoreV1().Services(s.ns).Create(s.ctx, svc, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		s.svcIP[svc.Name] = got.Spec.ClusterIP
	}
	s.waitPods()
}

func (s *svcEnv) waitPods() {
	s.podIP = map[string]string{}
	err := waitFor(s.ctx, 4*time.Minute, func() (bool, error) {
		list, err := s.client.CoreV1().Pods(s.ns).List(s.ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range list.Items {
			if p.Status.PodIP != "" && podIsReady(&p) {
				s.podIP[p.Name] = p.Status.PodIP
			}
		}
		return len(s.podIP) == len(s.pods), fmt.Errorf("%d of %d pods ready", len(s.podIP), len(s.pods))
	})
	if err != nil {
		dumpEvents(s.t, s.ctx, s.client, s.ns)
		s.t.Fatalf("pods: %v", err)
	}
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// answer is one probe's outcome: who answered and the client address it saw.
type answer struct {
	ok       bool
	pod      string
	from     string // client IP as the backend saw it
	why      string // when not ok
	duration time.Duration
}

func parseAnswer(line string) answer {
	a := answer{ok: true}
	f := strings.Fields(line)
	if len(f) > 0 {
		a.pod = f[0]
	}
	for _, x := range f[1:] {
		if v, ok := strings.CutPrefix(x, "from="); ok {
			a.from, _, _ = net.SplitHostPort(v)
		}
	}
	return a
}

// probe connects from a pod to addr through the localcluster CLI.
func (s *svcEnv) probe(from, addr, proto string, timeout time.Duration) answer {
	cmd := exec.CommandContext(s.ctx, filepath.Join(s.bin, "localcluster"), "--root", testutil.RepoRoot(), "--bin", s.bin,
		"probe", "-v", "--from", s.ref(from), "--addr", addr, "--proto", proto, "--timeout", timeout.String())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	if err := cmd.Run(); err != nil {
		return answer{why: fmt.Sprintf("probe failed: %v: %s", err, strings.TrimSpace(stderr.String()))}
	}
	line := strings.TrimSpace(stderr.String())
	if strings.TrimSpace(stdout.String()) == "allowed" {
		_, rest, _ := strings.Cut(line, " answered by ")
		a := parseAnswer(rest)
		a.duration = time.Since(start)
		return a
	}
	_, why, _ := strings.Cut(line, ": ")
	return answer{why: why, duration: time.Since(start)}
}

// probeHost connects from the host's underlay address (not a node).
func probeHost(addr, proto string, timeout time.Duration) answer {
	conn, err := net.DialTimeout(proto, addr, timeout)
	if err != nil {
		return answer{why: err.Error()}
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if proto == "udp" {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return answer{why: err.Error()}
		}
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return answer{why: err.Error()}
	}
	return parseAnswer(strings.TrimSpace(string(buf[:n])))
}

// ask runs a control command in a pod's testserver (its own resolver).
func (s *svcEnv) ask(pod string, command ...string) (string, error) {
	args := append([]string{"exec", s.ref(pod), "--", filepath.Join(s.bin, "testserver"), "ask", "127.0.0.1:7070"}, command...)
	cmd := exec.CommandContext(s.ctx, filepath.Join(s.bin, "localcluster"), append([]string{"--root", testutil.RepoRoot(), "--bin", s.bin}, args...)...)
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

func (s *svcEnv) addr(svc string) string {
	return net.JoinHostPort(s.svcIP[svc], fmt.Sprint(svcPort))
}

func (s *svcEnv) sortedPods(prefix string) []string {
	var out []string
	for p := range s.pods {
		if strings.HasPrefix(p, prefix) {
			out = append(out, p)
		}
	}
	sort.Strings(out)
	return out
}

// eventually retries check until it returns "" (a Service change takes
// kube-proxy's and weftd's sync to show), then reports the last failure.
func (s *svcEnv) eventually(name string, timeout time.Duration, check func() string) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		why := check()
		if why == "" {
			return
		}
		if time.Now().After(deadline) {
			s.t.Errorf("%s: %s", name, why)
			return
		}
		time.Sleep(time.Second)
	}
}

// clusterIPSpread: every pod reaches the echo ClusterIP over TCP and UDP,
// and the clients' answers come from every backend.
func (s *svcEnv) clusterIPSpread() {
	for _, proto := range []string{"tcp", "udp"} {
		for _, from := range s.sortedPods("") {
			s.eventually(fmt.Sprintf("%s %s -> echo ClusterIP", proto, from), 60*time.Second, func() string {
				a := s.probe(from, s.addr("echo"), proto, 2*time.Second)
				if !a.ok || !strings.HasPrefix(a.pod, "bk-") {
					return fmt.Sprintf("not answered by a backend: %+v", a)
				}
				if a.from != s.podIP[from] {
					return fmt.Sprintf("backend saw client %s, want the pod's own %s (no SNAT inside the cluster)", a.from, s.podIP[from])
				}
				return ""
			})
		}
		for _, from := range s.sortedPods("cl-") {
			seen := map[string]int{}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range 6 { // 6 workers x 5 probes, each a new connection (new source port)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for range 5 {
						if a := s.probe(from, s.addr("echo"), proto, 2*time.Second); a.ok {
							mu.Lock()
							seen[a.pod]++
							mu.Unlock()
						}
					}
				}()
			}
			wg.Wait()
			if len(seen) != 3 {
				s.t.Errorf("%s %s -> echo: 30 probes answered by %v, want all 3 backends", proto, from, seen)
			}
		}
	}
}

// hairpin: a pod reaches itself through a Service whose only endpoint it is.
func (s *svcEnv) hairpin() {
	for _, proto := range []string{"tcp", "udp"} {
		s.eventually(proto+" bk-1 -> solo (itself)", 60*time.Second, func() string {
			a := s.probe("bk-1", s.addr("solo"), proto, 2*time.Second)
			if !a.ok || a.pod != "bk-1" {
				return fmt.Sprintf("want bk-1 to answer itself: %+v", a)
			}
			return ""
		})
	}
}

func (s *svcEnv) nodePort(svc string) string {
	got, err := s.client.CoreV1().Services(s.ns).Get(s.ctx, svc, metav1.GetOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	return fmt.Sprint(got.Spec.Ports[0].NodePort)
}

// nodePorts: from the underlay (the host, not a node) every node's
// NodePort answers; with externalTrafficPolicy Local the answer comes
// from that node's own backend, which sees the host's address.
func (s *svcEnv) nodePorts() {
	cl, local := s.nodePort("np-cluster"), s.nodePort("np-local")
	for i, n := range s.nodes[:3] {
		ip := s.nodeIP[n]
		s.eventually("tcp host -> "+n+" NodePort (Cluster)", 60*time.Second, func() string {
			if a := probeHost(net.JoinHostPort(ip, cl), "tcp", 2*time.Second); !a.ok || !strings.HasPrefix(a.pod, "bk-") {
				return fmt.Sprintf("not answered by a backend: %+v", a)
			}
			return ""
		})
		want := fmt.Sprintf("bk-%d", i+1)
		s.eventually("tcp host -> "+n+" NodePort (Local)", 60*time.Second, func() string {
			a := probeHost(net.JoinHostPort(ip, local), "tcp", 2*time.Second)
			if !a.ok || a.pod != want || a.from != hostUnderIP {
				return fmt.Sprintf("want %s to answer and see the client %s: %+v", want, hostUnderIP, a)
			}
			return ""
		})
	}
}

// noEndpoints: a Service without endpoints is refused at once (kube-proxy's
// REJECT), from every client, TCP and UDP.
func (s *svcEnv) noEndpoints() {
	for _, proto := range []string{"tcp", "udp"} {
		for _, from := range s.sortedPods("cl-") {
			s.eventually(fmt.Sprintf("%s %s -> empty", proto, from), 20*time.Second, func() string {
				a := s.probe(from, s.addr("empty"), proto, 3*time.Second)
				if a.ok || !strings.Contains(a.why, "connection refused") {
					return fmt.Sprintf("want connection refused, got %+v", a)
				}
				if a.duration > 2*time.Second {
					return fmt.Sprintf("refused only after %s", a.duration)
				}
				return ""
			})
		}
	}
}

// dns: every client resolves the kubernetes Service and a test Service
// through kube-dns, by full and short name, and reaches it by name.
func (s *svcEnv) dns() {
	for _, from := range s.sortedPods("cl-") {
		cases := map[string]string{
			"kubernetes.default.svc.cluster.local": apiSvcIP,
			"echo." + s.ns + ".svc.cluster.local":  s.svcIP["echo"],
			"echo":                                 s.svcIP["echo"],
		}
		for name, want := range cases {
			s.eventually(from+" resolves "+name, 60*time.Second, func() string {
				out, err := s.ask(from, "resolve", name)
				if err != nil || out != "ok "+want {
					return fmt.Sprintf("got %q (%v), want ok %s", out, err, want)
				}
				return ""
			})
		}
		for _, proto := range []string{"tcp", "udp"} {
			s.eventually(from+" dials echo by name ("+proto+")", 60*time.Second, func() string {
				out, err := s.ask(from, "dial", proto, fmt.Sprintf("echo:%d", svcPort))
				if err != nil || !strings.HasPrefix(out, "ok bk-") {
					return fmt.Sprintf("got %q (%v)", out, err)
				}
				return ""
			})
		}
	}
}

func (s *svcEnv) applyPolicy(p *networkingv1.NetworkPolicy) {
	if _, err := s.client.NetworkingV1().NetworkPolicies(s.ns).Create(s.ctx, p, metav1.CreateOptions{}); err != nil {
		s.t.Fatal(err)
	}
}

// policies: NetworkPolicy holds through Services, after DNAT, by the
// backend's labels: an allow-list on bk-2 (node 2) admits cl-1 (another
// node) and cl-2 (same node) and denies cl-2b (same node) and cl-3 (another
// node), through its ClusterIP exactly as to its pod IP. Default-deny
// egress on cl-3 with an allow to kube-dns keeps DNS working and cuts the
// echo Service off.
func (s *svcEnv) policies() {
	s.applyPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "friends-only"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel("guarded", "yes"),
			PolicyTypes: []networkingv1.PolicyType{ingress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel("friend", "yes")}}}}}})
	dnsPort := intstr.FromInt32(53)
	udp, tcpP := corev1.ProtocolUDP, corev1.ProtocolTCP
	s.applyPolicy(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: "cl3-dns-only"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel("pod", "cl-3"),
			PolicyTypes: []networkingv1.PolicyType{egress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{
				To: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: sel("kubernetes.io/metadata.name", "kube-system"),
					PodSelector:       sel("k8s-app", "kube-dns")}},
				Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &dnsPort}, {Protocol: &tcpP, Port: &dnsPort}},
			}}}})
	defer func() {
		for _, n := range []string{"friends-only", "cl3-dns-only"} {
			_ = s.client.NetworkingV1().NetworkPolicies(s.ns).Delete(context.Background(), n, metav1.DeleteOptions{})
		}
	}()
	allowed := map[string]bool{"cl-1": true, "cl-2": true, "cl-2b": false, "cl-3": false}
	for _, from := range s.sortedPods("cl-") {
		for _, proto := range []string{"tcp", "udp"} {
			for _, to := range []string{s.addr("guarded"), net.JoinHostPort(s.podIP["bk-2"], fmt.Sprint(svcPort))} {
				s.eventually(fmt.Sprintf("policy %s %s -> %s", proto, from, to), 30*time.Second, func() string {
					a := s.probe(from, to, proto, time.Second)
					if allowed[from] && (!a.ok || a.pod != "bk-2") {
						return fmt.Sprintf("want bk-2 to answer: %+v", a)
					}
					if !allowed[from] && (a.ok || !strings.Contains(a.why, "i/o timeout")) {
						return fmt.Sprintf("want a timeout (dropped): %+v", a)
					}
					return ""
				})
			}
		}
	}
	s.eventually("cl-3 resolves echo under default-deny egress + allow kube-dns", 30*time.Second, func() string {
		if out, err := s.ask("cl-3", "resolve", "echo"); err != nil || out != "ok "+s.svcIP["echo"] {
			return fmt.Sprintf("got %q (%v)", out, err)
		}
		return ""
	})
	s.eventually("cl-3 -> echo ClusterIP denied by its egress policy", 30*time.Second, func() string {
		if a := s.probe("cl-3", s.addr("echo"), "tcp", time.Second); a.ok || !strings.Contains(a.why, "i/o timeout") {
			return fmt.Sprintf("want a timeout: %+v", a)
		}
		return ""
	})
}

// all runs every case under mode.
func (s *svcEnv) all(mode string) {
	for _, c := range []struct {
		name string
		f    func()
	}{
		{"ClusterIP", s.clusterIPSpread},
		{"Hairpin", s.hairpin},
		{"NodePort", s.nodePorts},
		{"NoEndpoints", s.noEndpoints},
		{"DNS", s.dns},
		{"NetworkPolicy", s.policies},
	} {
		s.t.Run(mode+"/"+c.name, func(t *testing.T) {
			outer := s.t
			s.t = t
			defer func() { s.t = outer }()
			c.f()
		})
	}
}

func TestServices(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	upCluster(t, ctx)
	bin := os.Getenv("WEFT_CLUSTER_BIN")
	if bin == "" {
		bin = filepath.Join(testutil.RepoRoot(), ".localcluster", "bin")
	}
	s := &svcEnv{t: t, ctx: ctx, client: adminClient(t), ns: fmt.Sprintf("svc%d", time.Now().UnixNano()%100000), bin: bin}
	s.setup()
	// Every case runs in both proxy modes on every backend: the backend
	// changes what carries the DNAT'ed packets between nodes (and, for
	// hairpin and NodePort, what returns them), so none is assumed to be
	// backend independent. The second mode walks the backends backwards to
	// save a switch.
	cms := s.client.CoreV1().ConfigMaps("kube-system")
	orig, err := cms.Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		setBackend(t, ctx, s.client, orig.Data["net-conf.json"], `{"type":"vxlan"}`)
		s.waitBackend("vxlan")
	}()
	backends := []struct {
		name, identity, section string
		bgp                     *bgpMode // for bgp: what its ipipMode shows
	}{
		{"vxlan", "vxlan", `{"type":"vxlan"}`, nil},
		{"udp", "udp", `{"type":"udp"}`, nil},
		{"bgp-never", "bgp/native", `{"type":"bgp","ipipMode":"Never"}`, &never},
		{"bgp-always", "bgp/ipip", `{"type":"bgp","ipipMode":"Always"}`, &always},
	}
	for _, mode := range []string{"iptables", "nftables"} {
		if mode != "iptables" {
			if _, err := localcluster(t, ctx, "up", "--nodes", "3", "--proxy-mode", mode); err != nil {
				t.Fatalf("switch kube-proxy to %s: %v", mode, err)
			}
			slices.Reverse(backends)
		}
		for _, b := range backends {
			setBackend(t, ctx, s.client, orig.Data["net-conf.json"], b.section)
			s.waitBackend(b.identity)
			if b.bgp != nil {
				// Wait for this mode's sessions and routes too, not only
				// the announced identity.
				nodes := s.nodeList()
				waitBGP(t, ctx, nodes, *b.bgp, func(n *corev1.Node) []*corev1.Node { return others(nodes, n.Name) }, 2*time.Minute)
			}
			s.all(mode + "+" + b.name)
		}
	}
}

// nodeList returns the cluster's Nodes.
func (s *svcEnv) nodeList() []*corev1.Node {
	s.t.Helper()
	list, err := s.client.CoreV1().Nodes().List(s.ctx, metav1.ListOptions{})
	if err != nil {
		s.t.Fatal(err)
	}
	var out []*corev1.Node
	for i := range list.Items {
		out = append(out, &list.Items[i])
	}
	return out
}

// waitBackend waits until every node announces that it sends with the
// encapsulation identity typ (weft.dev/backend, e.g. "udp", "bgp/ipip").
func (s *svcEnv) waitBackend(typ string) {
	s.t.Helper()
	if err := waitFor(s.ctx, 2*time.Minute, func() (bool, error) {
		nodes, err := s.client.CoreV1().Nodes().List(s.ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, n := range nodes.Items {
			if got := n.Annotations[annoBackend]; got != typ {
				return false, fmt.Errorf("%s sends with %q, want %q", n.Name, got, typ)
			}
		}
		return true, nil
	}); err != nil {
		s.t.Fatal(err)
	}
}
