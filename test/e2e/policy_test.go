package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
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

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

// The NetworkPolicy truth tables: namespaces x, y, z with pods a, b, c in
// each; a on node 1, b on node 2, c on node 3 (so pairs are same-node and
// cross-node); every pod serves TCP and UDP on 80 and 81. Every case probes
// all 81 ordered pairs on the ports it is about and compares with its own
// expected table. A pod reaching itself never leaves its namespace, so self
// pairs are expected allowed. Whole rounds are repeated until the change has
// propagated (or 30 s passed), then every probe must agree in 3 rounds in a
// row (see truth).

var (
	polNS   = []string{"x", "y", "z"}
	polPods = []string{"a", "b", "c"}
)

type pp struct{ ns, pod string }

func (p pp) String() string { return p.ns + "/" + p.pod }

type probeSpec struct {
	proto string
	port  int
}

func (s probeSpec) String() string { return fmt.Sprintf("%s/%d", s.proto, s.port) }

type polEnv struct {
	t      testing.TB
	ctx    context.Context
	client kubernetes.Interface
	prefix string // namespace prefix, unique per run
	nodes  []string
	ips    map[pp]string
	// probeFn replaces the real probe (tests of truth itself); converge
	// replaces truth's 30 s propagation deadline.
	probeFn  func(from, to pp, s probeSpec) probeResult
	converge time.Duration
	// ctl, when set, traces every case that agreed with weftctl policy
	// trace too, which must give the same answers (traceAgrees).
	ctl *weftctl
}

func (e *polEnv) ns(n string) string { return e.prefix + n }

func polPod(name, node string) *corev1.Pod {
	web := int32(80) // the named port "web": 80 on a and b, 81 on c
	if name == "c" {
		web = 81
	}
	ports := []corev1.ContainerPort{{Name: "web", ContainerPort: web, Protocol: corev1.ProtocolTCP}}
	for _, p := range []int32{80, 81} {
		if p != web {
			ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-tcp", p), ContainerPort: p, Protocol: corev1.ProtocolTCP})
		}
		ports = append(ports, corev1.ContainerPort{Name: fmt.Sprintf("serve-%d-udp", p), ContainerPort: p, Protocol: corev1.ProtocolUDP})
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"pod": name}},
		Spec:       corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{Name: "srv", Image: "weft.dev/echo:test", Ports: ports}}},
	}
}

func (e *polEnv) setup() {
	t := e.t
	nl, err := e.client.CoreV1().Nodes().List(e.ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nl.Items {
		e.nodes = append(e.nodes, n.Name)
	}
	sort.Strings(e.nodes)
	if len(e.nodes) < 3 {
		t.Fatalf("need 3 nodes, have %v", e.nodes)
	}
	for _, n := range polNS {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: e.ns(n), Labels: map[string]string{"ns": n}}}
		if _, err := e.client.CoreV1().Namespaces().Create(e.ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		name := e.ns(n)
		t.Cleanup(func() { _ = e.client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}) })
		for i, p := range polPods {
			if _, err := e.client.CoreV1().Pods(e.ns(n)).Create(e.ctx, polPod(p, e.nodes[i]), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.ips = map[pp]string{}
	err = waitFor(e.ctx, 4*time.Minute, func() (bool, error) {
		for _, n := range polNS {
			list, err := e.client.CoreV1().Pods(e.ns(n)).List(e.ctx, metav1.ListOptions{})
			if err != nil {
				return false, err
			}
			for _, p := range list.Items {
				if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
					e.ips[pp{n, p.Name}] = p.Status.PodIP
				}
			}
		}
		return len(e.ips) == 9, fmt.Errorf("%d of 9 pods running", len(e.ips))
	})
	if err != nil {
		t.Fatalf("pods: %v", err)
	}
}

func allPairs() (out [][2]pp) {
	for _, sn := range polNS {
		for _, sp := range polPods {
			for _, dn := range polNS {
				for _, dp := range polPods {
					out = append(out, [2]pp{{sn, sp}, {dn, dp}})
				}
			}
		}
	}
	return out
}

// probeResult is one probe's answer as hack/localcluster probe -v gives it.
type probeResult struct {
	allowed bool
	detail  string // who answered, or why nothing did
}

// ok tells whether the answer is the expected one: an allow must come from
// the target pod itself, and a deny must be a timeout (a refusal or an ICMP
// error means the packet reached the pod, or a node, and came back).
func (r probeResult) ok(to pp, allow bool) bool {
	if allow {
		return r.allowed && r.detail == to.pod
	}
	return !r.allowed && strings.Contains(r.detail, "i/o timeout")
}

func (r probeResult) String() string {
	if r.allowed {
		return "allowed (answered by " + r.detail + ")"
	}
	return "denied (" + r.detail + ")"
}

// probe runs one probe through the localcluster CLI (built by upCluster;
// called directly, not through the script, as truth runs hundreds).
func (e *polEnv) probe(from, to pp, s probeSpec) probeResult {
	root := testutil.RepoRoot()
	bin := os.Getenv("WEFT_CLUSTER_BIN")
	if bin == "" {
		bin = filepath.Join(root, ".localcluster", "bin")
	}
	cmd := exec.CommandContext(e.ctx, filepath.Join(bin, "localcluster"), "--root", root, "--bin", bin, "probe", "-v",
		"--from", e.ns(from.ns)+"/"+from.pod, "--to", e.ns(to.ns)+"/"+to.pod,
		"--port", fmt.Sprint(s.port), "--proto", s.proto, "--timeout", "1s")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e.t.Errorf("probe %s -> %s %s: %v: %s", from, to, s, err, strings.TrimSpace(stderr.String()))
		return probeResult{detail: "probe failed"}
	}
	res := probeResult{allowed: strings.TrimSpace(stdout.String()) == "allowed"}
	line := strings.TrimSpace(stderr.String())
	if res.allowed {
		_, res.detail, _ = strings.Cut(line, " answered by ")
	} else if _, why, ok := strings.Cut(line, ": "); ok {
		res.detail = why
	} else {
		res.detail = line
	}
	return res
}

// stableRounds is how many rounds in a row must agree with the table.
const stableRounds = 3

type probeJob struct {
	pair [2]pp
	spec probeSpec
}

type probeMiss struct {
	job  probeJob
	want bool
	got  probeResult
}

// truth probes every pair on every spec in rounds (all probes of a round
// in parallel) and compares each with the table: an expected allow must
// be answered by the target, an expected deny must time out. Rounds repeat
// while the change propagates (up to 30 s) until one agrees on every probe;
// then the next rounds must agree too, stableRounds in a row, with no retry
// of anything: a pair that flaps once fails the case.
func (e *polEnv) truth(name string, specs []probeSpec, want func(from, to pp, s probeSpec) bool) {
	e.t.Helper()
	var jobs []probeJob
	for _, s := range specs {
		for _, p := range allPairs() {
			jobs = append(jobs, probeJob{p, s})
		}
	}
	expect := func(j probeJob) bool { return j.pair[0] == j.pair[1] || want(j.pair[0], j.pair[1], j.spec) }
	converge := e.converge
	if converge == 0 {
		converge = 30 * time.Second
	}
	deadline := time.Now().Add(converge)
	start := time.Now()
	for agreed, round := 0, 1; ; round++ {
		wrong := e.round(jobs, expect)
		switch {
		case len(wrong) == 0:
			if agreed++; agreed == stableRounds {
				e.t.Logf("%s: %d probes agree with the truth table in %d rounds in a row (%d rounds, %.1fs)",
					name, len(jobs), stableRounds, round, time.Since(start).Seconds())
				if e.ctl != nil {
					e.traceAgrees(e.ctl, name, specs, expect)
				}
				return
			}
			continue
		case agreed > 0:
			e.report(name, fmt.Sprintf("round %d, after %d agreeing rounds", round, agreed), wrong)
			return
		case time.Now().After(deadline):
			e.report(name, fmt.Sprintf("round %d, not converged after %s", round, converge), wrong)
			return
		}
		time.Sleep(time.Second)
	}
}

// round runs every job once, in parallel, and returns the misses.
func (e *polEnv) round(jobs []probeJob, expect func(probeJob) bool) []probeMiss {
	var mu sync.Mutex
	var wrong []probeMiss
	sem := make(chan struct{}, 16)
	var wg sync.WaitGroup
	for _, j := range jobs {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			probe := e.probe
			if e.probeFn != nil {
				probe = e.probeFn
			}
			got, exp := probe(j.pair[0], j.pair[1], j.spec), expect(j)
			if !got.ok(j.pair[1], exp) {
				mu.Lock()
				wrong = append(wrong, probeMiss{j, exp, got})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return wrong
}

func (e *polEnv) report(name, when string, wrong []probeMiss) {
	e.t.Helper()
	for i, m := range wrong {
		if i == 20 {
			e.t.Errorf("%s: ... %d disagreements in all", name, len(wrong))
			break
		}
		e.t.Errorf("%s (%s): %s -> %s %s: %s, want allowed=%v", name, when, m.job.pair[0], m.job.pair[1], m.job.spec, m.got, m.want)
	}
}

func (e *polEnv) apply(p *networkingv1.NetworkPolicy) {
	e.t.Helper()
	p = p.DeepCopy()
	p.Namespace = e.ns(p.Namespace)
	cur, err := e.client.NetworkingV1().NetworkPolicies(p.Namespace).Get(e.ctx, p.Name, metav1.GetOptions{})
	if err == nil {
		p.ResourceVersion = cur.ResourceVersion
		_, err = e.client.NetworkingV1().NetworkPolicies(p.Namespace).Update(e.ctx, p, metav1.UpdateOptions{})
	} else {
		_, err = e.client.NetworkingV1().NetworkPolicies(p.Namespace).Create(e.ctx, p, metav1.CreateOptions{})
	}
	if err != nil {
		e.t.Fatalf("apply policy %s/%s: %v", p.Namespace, p.Name, err)
	}
}

func (e *polEnv) deleteAll() {
	e.t.Helper()
	for _, n := range polNS {
		if err := e.client.NetworkingV1().NetworkPolicies(e.ns(n)).DeleteCollection(e.ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			e.t.Fatal(err)
		}
	}
}

func netpol(ns, name string, sel map[string]string, types ...networkingv1.PolicyType) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchLabels: sel}, PolicyTypes: types}}
}

func sel(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

func npPort(proto corev1.Protocol, port intstr.IntOrString, end ...int32) networkingv1.NetworkPolicyPort {
	p := networkingv1.NetworkPolicyPort{Protocol: &proto, Port: &port}
	if len(end) > 0 {
		p.EndPort = &end[0]
	}
	return p
}

var (
	tcp80, tcp81 = probeSpec{"tcp", 80}, probeSpec{"tcp", 81}
	udp80, udp81 = probeSpec{"udp", 80}, probeSpec{"udp", 81}
	ingress      = networkingv1.PolicyTypeIngress
	egress       = networkingv1.PolicyTypeEgress
)

// upCluster brings the 3-node cluster up (or reuses it with WEFT_E2E_KEEP)
// and tears it down at the end, checking the host is as before.
func upCluster(t *testing.T, ctx context.Context) {
	t.Helper()
	if !keep() {
		if _, err := localcluster(t, ctx, "down"); err != nil {
			t.Fatalf("pre-clean: %v", err)
		}
		before := snapshot(t)
		t.Cleanup(func() {
			if _, err := localcluster(t, context.Background(), "down"); err != nil {
				t.Errorf("down: %v", err)
			}
			assertHostRestored(t, before, snapshot(t))
		})
	}
	if _, err := localcluster(t, ctx, "up", "--nodes", "3"); err != nil {
		t.Fatalf("up: %v", err)
	}
}

// nodeNetns is the network namespace of cluster node i (1-based).
func nodeNetns(i int) string { return fmt.Sprintf("/run/netns/wl-node%d", i) }

func TestNetworkPolicy(t *testing.T) {
	testutil.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	upCluster(t, ctx)
	e := &polEnv{t: t, ctx: ctx, client: adminClient(t), prefix: fmt.Sprintf("np%d-", time.Now().UnixNano()%100000)}
	e.setup()
	e.ctl = buildWeftctl(t, ctx)
	all := []probeSpec{tcp80, tcp81, udp80, udp81}
	open := func(from, to pp, s probeSpec) bool { return true }

	e.truth("no policy", all, open)

	e.apply(netpol("x", "deny", nil, ingress))
	e.truth("default deny ingress in x", all, func(f, to pp, s probeSpec) bool { return to.ns != "x" })

	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "from-y"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel("pod", "a"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("ns", "y")}}}}}})
	e.truth("allow from namespace y to x/a", []probeSpec{tcp80, udp81}, func(f, to pp, s probeSpec) bool {
		return to.ns != "x" || to.pod == "a" && f.ns == "y"
	})

	// Policy update: from-y now admits z instead (and only pods b there).
	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "from-y"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel("pod", "a"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				NamespaceSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "ns", Operator: metav1.LabelSelectorOpIn, Values: []string{"z"}}}},
				PodSelector:       sel("pod", "b")}}}}}})
	combined := func(f, to pp, s probeSpec) bool { return to.ns != "x" || to.pod == "a" && f == (pp{"z", "b"}) }
	e.truth("policy update: combined selectors z AND pod=b", []probeSpec{tcp80}, combined)

	// Pod label change: z/c becomes a "b".
	zc, err := e.client.CoreV1().Pods(e.ns("z")).Get(ctx, "c", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	zc.Labels["pod"] = "b"
	if _, err := e.client.CoreV1().Pods(e.ns("z")).Update(ctx, zc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.truth("pod label change", []probeSpec{tcp80}, func(f, to pp, s probeSpec) bool {
		return combined(f, to, s) || to == (pp{"x", "a"}) && f == (pp{"z", "c"})
	})
	// Namespace label change: y joins ns=z's selector by label.
	yns, err := e.client.CoreV1().Namespaces().Get(ctx, e.ns("y"), metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	yns.Labels["ns"] = "z"
	if _, err := e.client.CoreV1().Namespaces().Update(ctx, yns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.truth("namespace label change", []probeSpec{tcp80}, func(f, to pp, s probeSpec) bool {
		return to.ns != "x" || to.pod == "a" && (f == pp{"z", "b"} || f == pp{"z", "c"} || f == pp{"y", "b"})
	})
	if yns, err = e.client.CoreV1().Namespaces().Get(ctx, e.ns("y"), metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	yns.Labels["ns"] = "y"
	if _, err := e.client.CoreV1().Namespaces().Update(ctx, yns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	e.deleteAll()
	e.truth("deletion reopens", []probeSpec{tcp80, udp80}, open)

	// Named ports: "web" is 80 on a and b, 81 on c.
	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "web"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPort(corev1.ProtocolTCP, intstr.FromString("web"))}}}}})
	e.truth("named port per destination pod", all, func(f, to pp, s probeSpec) bool {
		if to.ns != "y" {
			return true
		}
		return s.proto == "tcp" && (s.port == 80) == (to.pod != "c")
	})
	e.deleteAll()

	// endPort: TCP 80-81 into z, UDP closed.
	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "z", Name: "range"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPort(corev1.ProtocolTCP, intstr.FromInt32(80), 81)}}}}})
	e.truth("endPort range", all, func(f, to pp, s probeSpec) bool { return to.ns != "z" || s.proto == "tcp" })
	e.deleteAll()

	// ipBlock with except: into x from node 1's pod CIDR (the "a" pods),
	// except y/a's address.
	except := e.ips[pp{"y", "a"}] + "/32"
	n1, err := e.client.CoreV1().Nodes().Get(ctx, e.nodes[0], metav1.GetOptions{})
	if err != nil || n1.Spec.PodCIDR == "" {
		t.Fatalf("node %s podCIDR: %v", e.nodes[0], err)
	}
	cidr := n1.Spec.PodCIDR
	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "block"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: []string{except}}}}}}}})
	e.truth("ipBlock with except", []probeSpec{tcp81}, func(f, to pp, s probeSpec) bool {
		return to.ns != "x" || f.pod == "a" && f.ns != "y"
	})
	e.deleteAll()

	// Egress deny from y, except UDP to z.
	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "egress"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}, PolicyTypes: []networkingv1.PolicyType{egress},
			Egress: []networkingv1.NetworkPolicyEgressRule{{To: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: sel("ns", "z")}},
				Ports: []networkingv1.NetworkPolicyPort{npPort(corev1.ProtocolUDP, intstr.FromInt32(80))}}}}})
	egressWant := func(f, to pp, s probeSpec) bool { return f.ns != "y" || to.ns == "z" && s == udp80 }
	e.truth("egress deny", []probeSpec{tcp80, udp80}, egressWant)

	// SCTP: no sockets here; the rule is in every node's kernel.
	e.apply(&networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "sctp"},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPort(corev1.ProtocolSCTP, intstr.FromInt32(80))}}}}})
	for i := 1; i <= 3; i++ {
		err := waitFor(ctx, 30*time.Second, func() (bool, error) {
			save, err := nodeSave(ctx, i)
			return err == nil && strings.Contains(save, "-p sctp -m sctp --dport 80"), fmt.Errorf("no SCTP rule on node %d (%v)", i, err)
		})
		if err != nil {
			t.Error(err)
		}
	}

	if err := e.client.NetworkingV1().NetworkPolicies(e.ns("x")).Delete(ctx, "sctp", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}

	// Drift: delete a WEFT chain by hand on node 2; the resync puts it back.
	if err := deleteDispatch(ctx, 2); err != nil {
		t.Fatal(err)
	}
	err = waitFor(ctx, 60*time.Second, func() (bool, error) {
		save, err := nodeSave(ctx, 2)
		return err == nil && strings.Contains(save, ":WEFT-POL-FWD") && strings.Contains(save, "weft-policy-jump"), fmt.Errorf("WEFT-POL-FWD not restored (%v)", err)
	})
	if err != nil {
		t.Fatal(err)
	}
	e.truth("egress deny after drift repair", []probeSpec{tcp80, udp80}, egressWant)
	e.deleteAll()

	e.checkWeftctl(e.ctl)

	e.checkSpoofing()
	e.recordsRebuilt()
}

func nodeRunner(ctx context.Context, i int) (iptables.Runner, error) {
	mode, err := iptables.Detect(ctx, nodeNetns(i))
	return iptables.Runner{Mode: mode, NetNS: nodeNetns(i)}, err
}

func nodeSave(ctx context.Context, i int) (string, error) {
	r, err := nodeRunner(ctx, i)
	if err != nil {
		return "", err
	}
	return r.Save(ctx, "filter")
}

// deleteDispatch removes the FORWARD jump and the WEFT-POL-FWD chain by
// hand, as an operator might.
func deleteDispatch(ctx context.Context, i int) error {
	r, err := nodeRunner(ctx, i)
	if err != nil {
		return err
	}
	ipt := "iptables-" + string(r.Mode)
	save, err := r.Save(ctx, "filter")
	if err != nil {
		return err
	}
	d, err := iptables.ParseSave(save, "filter")
	if err != nil {
		return err
	}
	for n := len(d.Chains["FORWARD"].Rules); n >= 1; n-- {
		if strings.Contains(iptables.Comment(d.Chains["FORWARD"].Rules[n-1]), "weft-policy-jump") {
			if out, err := exec.CommandContext(ctx, "nsenter", "--net="+nodeNetns(i), "--", ipt, "-D", "FORWARD", fmt.Sprint(n)).CombinedOutput(); err != nil {
				return fmt.Errorf("%v: %s", err, out)
			}
		}
	}
	for _, args := range [][]string{{"-F", "WEFT-POL-FWD"}, {"-X", "WEFT-POL-FWD"}} {
		if out, err := exec.CommandContext(ctx, "nsenter", append([]string{"--net=" + nodeNetns(i), "--", ipt}, args...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %s", err, out)
		}
	}
	return nil
}
