package policy

import (
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
)

func states(c *cluster, pols ...*networkingv1.NetworkPolicy) map[int]*State {
	return map[int]*State{1: c.render(1, pols...), 2: c.render(2, pols...)}
}

func mustAllow(t *testing.T, st map[int]*State, f flow, want bool) {
	t.Helper()
	got, why := allowed(st, f)
	if got != want {
		t.Errorf("%v -> %v %s/%d ct=%s: allowed=%v want %v\n%s", f.src, f.dst, f.proto, f.port, f.ct, got, want, why)
	}
}

func TestRepliesPassInvalidDrops(t *testing.T) {
	c := newCluster()
	st := states(c, np("x", "deny", nil, tBoth), np("y", "deny", nil, tBoth))
	xa, ya := ref{"x", "a"}, ref{"y", "a"}
	xb, yb := ref{"x", "b"}, ref{"y", "b"}
	for _, pair := range [][2]ref{{xa, ya}, {xa, xb}, {yb, xa}} {
		mustAllow(t, st, flow{src: pair[0], dst: pair[1], proto: "tcp", port: 80}, false)
		mustAllow(t, st, flow{src: pair[0], dst: pair[1], proto: "tcp", port: 80, ct: "ESTABLISHED"}, true)
		mustAllow(t, st, flow{src: pair[0], dst: pair[1], proto: "udp", port: 53, ct: "RELATED"}, true)
	}
	// INVALID drops even where no policy applies.
	open := states(c)
	mustAllow(t, open, flow{src: xa, dst: yb, proto: "tcp", port: 80, ct: "INVALID"}, false)
	mustAllow(t, open, flow{src: xa, dst: yb, proto: "tcp", port: 80}, true)
}

// SCTP: this kernel has no SCTP sockets, so the tracer is the proof here
// (the privileged test reads the SCTP rules back from the kernel).
func TestSCTP(t *testing.T) {
	c := newCluster()
	pols := []*networkingv1.NetworkPolicy{withIngress(np("x", "sctp", nil, tIn), in(nil, pPort(corev1.ProtocolSCTP, num(80))))}
	requireTruth(t, c, pols, []flow{sctp80, tcp80, {proto: "sctp", port: 81}}, func(s, d ref, f flow) bool {
		return d.ns != "x" || f.proto == "sctp" && f.port == 80
	})
	st := c.render(1, pols...)
	found := false
	for _, ch := range st.Chains {
		for _, r := range ch.Rules {
			if strings.Contains(r.Text(), "-p sctp -m sctp --dport 80") {
				found = true
			}
		}
	}
	if !found {
		t.Fatalf("no sctp rule in\n%s", st.RestoreText())
	}
}

func TestExternalSources(t *testing.T) {
	c := newCluster()
	xa := ref{"x", "a"}
	st := states(c, withIngress(np("x", "ext", nil, tIn),
		in([]from{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.7.0/24"}}}})))
	mustAllow(t, st, flow{srcAddr: netip.MustParseAddr("192.168.1.1"), dst: xa, proto: "tcp", port: 80}, true)
	mustAllow(t, st, flow{srcAddr: netip.MustParseAddr("192.168.7.9"), dst: xa, proto: "tcp", port: 80}, false)
	mustAllow(t, st, flow{srcAddr: netip.MustParseAddr("172.16.0.1"), dst: xa, proto: "tcp", port: 80}, false)
	// A selector peer never matches addresses outside the cluster's pods.
	st = states(c, withIngress(np("x", "sel", nil, tIn), in([]from{{NamespaceSelector: &metav1.LabelSelector{}}})))
	mustAllow(t, st, flow{srcAddr: netip.MustParseAddr("172.16.0.1"), dst: xa, proto: "tcp", port: 80}, false)
	mustAllow(t, st, flow{src: ref{"z", "c"}, dst: xa, proto: "tcp", port: 80}, true)
}

func TestHostNetworkPodsAreNotPeersOrEndpoints(t *testing.T) {
	c := newCluster()
	host := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "hostpod", UID: "uid-h", Labels: map[string]string{"pod": "b"}},
		Spec:   corev1.PodSpec{HostNetwork: true},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "192.168.50.1", PodIPs: []corev1.PodIP{{IP: "192.168.50.1"}}}}
	c.pods = append(c.pods, host)
	st := states(c, withIngress(np("x", "from-b", nil, tIn), in([]from{{NamespaceSelector: ls("ns", "y"), PodSelector: ls("pod", "b")}})))
	mustAllow(t, st, flow{src: ref{"y", "b"}, dst: ref{"x", "a"}, proto: "tcp", port: 80}, true)
	mustAllow(t, st, flow{srcAddr: netip.MustParseAddr("192.168.50.1"), dst: ref{"x", "a"}, proto: "tcp", port: 80}, false)
	for _, s := range st[1].IPSets {
		for _, m := range s.Members {
			if m == "192.168.50.1" {
				t.Fatalf("host-network pod address in set %s", s.Name)
			}
		}
	}
}

func TestUnknownEndpointsFailClosed(t *testing.T) {
	c := newCluster()
	eps := append(c.endpoints(1),
		endpoint.Endpoint{PodNamespace: "x", PodName: "ghost", PodUID: "u", HostVeth: "wvghost", IPs: []string{"10.244.1.99/24"}},
		// A record whose UID does not match the pod (a recreated pod) is not trusted either.
		endpoint.Endpoint{PodNamespace: "y", PodName: "b", PodUID: "stale", HostVeth: "wvstale", IPs: []string{"10.244.1.98/24"}})
	st := Render(DefaultConfig(), Input{Pods: c.pods, Namespaces: c.namespaces, Endpoints: eps})
	for _, e := range st.Endpoints {
		if (e.HostVeth == "wvghost" || e.HostVeth == "wvstale") == e.Ready {
			t.Errorf("endpoint %s ready=%v", e.HostVeth, e.Ready)
		}
	}
	xa := ipOf(ref{"x", "a"})
	cases := []struct {
		name string
		p    Packet
		want bool
	}{
		{"from a record without pod", Packet{Src: netip.MustParseAddr("10.244.1.99"), Dst: xa, Proto: "tcp", DPort: 80,
			InIface: "weft0", OutIface: "weft0", PhysIn: "wvghost", PhysOut: "wvxa", Bridged: true}, false},
		{"to a record without pod (routed)", Packet{Src: netip.MustParseAddr("10.244.2.5"), Dst: netip.MustParseAddr("10.244.1.99"),
			Proto: "tcp", DPort: 80, InIface: "weft.vxlan", OutIface: "weft0"}, false},
		{"from a stale record", Packet{Src: netip.MustParseAddr("10.244.1.98"), Dst: xa, Proto: "tcp", DPort: 80,
			InIface: "weft0", OutIface: "weft.vxlan", PhysIn: "wvstale"}, false},
		{"from a port with no record", Packet{Src: netip.MustParseAddr("10.244.1.97"), Dst: xa, Proto: "tcp", DPort: 80,
			InIface: "weft0", OutIface: "weft0", PhysIn: "wvnew", PhysOut: "wvxa", Bridged: true}, false},
		{"to an address with no record", Packet{Src: netip.MustParseAddr("10.244.2.5"), Dst: netip.MustParseAddr("10.244.1.97"),
			Proto: "tcp", DPort: 80, InIface: "weft.vxlan", OutIface: "weft0"}, false},
		{"known to known", Packet{Src: ipOf(ref{"x", "b"}), Dst: xa, Proto: "tcp", DPort: 80,
			InIface: "weft0", OutIface: "weft0", PhysIn: "wvxb", PhysOut: "wvxa", Bridged: true}, true},
		{"traffic not touching weft0 is not ours", Packet{Src: netip.MustParseAddr("1.1.1.1"), Dst: netip.MustParseAddr("2.2.2.2"),
			Proto: "tcp", DPort: 80, InIface: "eth0", OutIface: "eth1"}, true},
	}
	for _, tc := range cases {
		tr := st.Trace("FORWARD", tc.p)
		if tr.Allowed() != tc.want {
			t.Errorf("%s: %s", tc.name, tr)
		}
	}
	if tr := st.Trace("FORWARD", cases[6].p); tr.Verdict != Pass {
		t.Errorf("foreign traffic must pass untouched, got %s", tr)
	}
}

func TestFailClosed(t *testing.T) {
	c := newCluster()
	bad := withIngress(np("x", "bad", map[string]string{"pod": "a"}, tIn),
		in([]from{{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Resembles"}}}}}))
	allowAll := withEgress(withIngress(np("x", "allow-all", nil, tBoth), in(nil)), eg(nil))
	badProto := withIngress(np("y", "bad-proto", map[string]string{"pod": "b"}, tIn), in(nil, pPort("ICMP", num(1))))
	badSel := np("z", "bad-sel", nil, tIn)
	badSel.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: metav1.LabelSelectorOpIn}}}
	badEnd := withIngress(np("y", "bad-end", map[string]string{"pod": "c"}, tIn), in(nil, pPort(corev1.ProtocolTCP, named("http"), 90)))
	pols := []*networkingv1.NetworkPolicy{bad, allowAll, badProto, badSel, badEnd}
	st := states(c, pols...)
	// Each node reports the broken policies selecting its pods: node 1 holds
	// x/a (bad) and z/a (bad-sel); node 2 holds y/b, y/c and z/b, z/c.
	if n := len(st[1].Errors); n != 2 {
		t.Fatalf("node1: want 2 errors reported, got %d: %v", n, st[1].Errors)
	}
	if n := len(st[2].Errors); n != 3 {
		t.Fatalf("node2: want 3 errors reported, got %d: %v", n, st[2].Errors)
	}
	// x/a is selected by the broken policy: closed both ways, even though
	// another policy allows everything. x/b is only under allow-all.
	for _, p := range []flow{tcp80, udp81} {
		for _, other := range []ref{{"y", "a"}, {"x", "b"}, {"z", "c"}} {
			mustAllow(t, st, flow{src: other, dst: ref{"x", "a"}, proto: p.proto, port: p.port}, false)
			mustAllow(t, st, flow{src: ref{"x", "a"}, dst: other, proto: p.proto, port: p.port}, false)
		}
		mustAllow(t, st, flow{src: ref{"y", "a"}, dst: ref{"x", "b"}, proto: p.proto, port: p.port}, true)
		mustAllow(t, st, flow{src: ref{"x", "a"}, dst: ref{"y", "b"}, proto: p.proto, port: p.port}, false)
		mustAllow(t, st, flow{src: ref{"x", "c"}, dst: ref{"y", "b"}, proto: p.proto, port: p.port}, false)
		mustAllow(t, st, flow{src: ref{"x", "c"}, dst: ref{"y", "c"}, proto: p.proto, port: p.port}, false)
		mustAllow(t, st, flow{src: ref{"x", "c"}, dst: ref{"y", "a"}, proto: p.proto, port: p.port}, true)
		// A broken podSelector closes every pod of its namespace.
		for _, pod := range []string{"a", "b", "c"} {
			mustAllow(t, st, flow{src: ref{"y", "a"}, dst: ref{"z", pod}, proto: p.proto, port: p.port}, false)
		}
	}
	for _, err := range append(st[1].Errors, st[2].Errors...) {
		if !strings.Contains(err.Error(), "policy ") {
			t.Errorf("error lacks the policy name: %v", err)
		}
	}
}

func TestChangesTakeEffect(t *testing.T) {
	c := newCluster()
	pol := withIngress(np("x", "from-green", nil, tIn), in([]from{{NamespaceSelector: ls("color", "green"), PodSelector: ls("role", "client")}}))
	src, dst := ref{"z", "b"}, ref{"x", "a"}
	f := flow{src: src, dst: dst, proto: "tcp", port: 80}
	mustAllow(t, states(c, pol), f, false)
	c.namespaces[2].Labels["color"] = "green" // namespace label change
	mustAllow(t, states(c, pol), f, false)
	c.pod(src).Labels["role"] = "client" // pod label change
	mustAllow(t, states(c, pol), f, true)
	// A new pod appears in z with the labels: it is allowed at once.
	np := c.pod(src).DeepCopy()
	np.Name, np.UID = "new", types.UID("uid-new")
	np.Status.PodIP, np.Status.PodIPs = "10.244.2.77", []corev1.PodIP{{IP: "10.244.2.77"}}
	c.pods = append(c.pods, np)
	tr := states(c, pol)[1].Trace("FORWARD", Packet{Src: netip.MustParseAddr("10.244.2.77"), Dst: ipOf(dst), Proto: "tcp", DPort: 80,
		InIface: "weft.vxlan", OutIface: "weft0"})
	if !tr.Allowed() {
		t.Errorf("new pod not allowed: %s", tr)
	}
	// The pod goes away: its address leaves the set.
	c.pods = c.pods[:len(c.pods)-1]
	tr = states(c, pol)[1].Trace("FORWARD", Packet{Src: netip.MustParseAddr("10.244.2.77"), Dst: ipOf(dst), Proto: "tcp", DPort: 80,
		InIface: "weft.vxlan", OutIface: "weft0"})
	if tr.Allowed() {
		t.Errorf("deleted pod still allowed: %s", tr)
	}
	// Policy deletion reopens.
	mustAllow(t, states(c), flow{src: ref{"y", "c"}, dst: dst, proto: "tcp", port: 80}, true)
	// Namespace deleted with its label: z/b no longer matches.
	c.namespaces = c.namespaces[:2]
	mustAllow(t, states(c, pol), f, false)
}

// The endpoint record carries the address before the Pod status does.
func TestRecordAddressBeforePodStatus(t *testing.T) {
	c := newCluster()
	p := c.pod(ref{"x", "b"})
	p.Status.PodIP, p.Status.PodIPs = "", nil
	st := states(c, withIngress(np("y", "from-xb", nil, tIn), in([]from{{NamespaceSelector: ls("ns", "x"), PodSelector: ls("pod", "b")}})))
	mustAllow(t, st, flow{src: ref{"x", "b"}, dst: ref{"y", "a"}, proto: "tcp", port: 80}, true)
}

func TestNames(t *testing.T) {
	long := strings.Repeat("n", 63)
	pi := policyChain(ingress, long, long, "")
	pe := policyChain(egress, long, long, "")
	if len(pi) > MaxChainName || len(pe) > MaxChainName || pi == pe || !strings.HasPrefix(pi, "WEFT-PI-") {
		t.Fatalf("long names: %q %q", pi, pe)
	}
	if pi != policyChain(ingress, long, long, "") {
		t.Fatal("not deterministic")
	}
	if policyChain(ingress, long, long+"x", "") == pi || policyChain(ingress, long, long, "v1") == policyChain(ingress, long, long, "v2") {
		t.Fatal("collision")
	}
	if got := policyChain(ingress, "x", "deny", ""); got != "WEFT-PI-x.deny" {
		t.Fatalf("short name hashed: %q", got)
	}
	if n := fromChain("wv0123456789abc"); len(n) > MaxChainName || n != "WEFT-FROM-wv0123456789abc" {
		t.Fatalf("from chain %q", n)
	}
	s := podSetName("key")
	if len(s) > MaxSetName || len(TempSetName(s)) > MaxSetName || TempSetName(s) == s || !strings.HasPrefix(s, SetPrefix) {
		t.Fatalf("set names %q %q", s, TempSetName(s))
	}
	// Every name rendered for a large policy set fits.
	c := newCluster()
	var pols []*networkingv1.NetworkPolicy
	for i := 0; i < 20; i++ {
		name := strings.Repeat("p", 40+i)
		pols = append(pols, withIngress(np("x", name, nil, tIn), in([]from{{PodSelector: ls("pod", name)}}, pPort(corev1.ProtocolTCP, named("http")))))
	}
	st := c.render(1, pols...)
	seen := map[string]bool{}
	for _, ch := range st.Chains {
		if len(ch.Name) > MaxChainName || !strings.HasPrefix(ch.Name, ChainPrefix) || seen[ch.Name] {
			t.Errorf("bad chain name %q", ch.Name)
		}
		seen[ch.Name] = true
	}
	for _, s := range st.IPSets {
		if len(s.Name) > MaxSetName || !strings.HasPrefix(s.Name, SetPrefix) {
			t.Errorf("bad set name %q", s.Name)
		}
	}
}

func TestRenderIsDeterministicAndCommented(t *testing.T) {
	c := newCluster()
	pols := []*networkingv1.NetworkPolicy{
		withIngress(np("x", "a", nil, tIn), in([]from{{NamespaceSelector: ls("ns", "y")}}, pPort(corev1.ProtocolTCP, named("http")))),
		withEgress(np("y", "b", nil, tEg), eg([]from{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}}})),
	}
	a, b := c.render(1, pols...), c.render(1, pols[1], pols[0])
	if a.RestoreText() != b.RestoreText() || a.IPSetRestoreText() != b.IPSetRestoreText() {
		t.Fatal("render depends on input order")
	}
	for _, ch := range a.Chains {
		for _, r := range ch.Rules {
			if r.Comment == "" {
				t.Errorf("%s: rule without owner comment: %s", ch.Name, r.Text())
			}
			if strings.HasPrefix(ch.Name, "WEFT-PI-") && !strings.Contains(r.Comment, "policy x/a") {
				t.Errorf("%s: comment does not name the policy: %q", ch.Name, r.Comment)
			}
		}
	}
}

// The caching Renderer must give exactly what a fresh Render gives, across
// updates (new resourceVersions), deletions and in-place-free changes.
func TestRendererCacheMatchesRender(t *testing.T) {
	c := newCluster()
	for i, p := range c.pods {
		p.ResourceVersion = "1"
		_ = i
	}
	pol := withIngress(np("x", "p", nil, tIn), in([]from{{PodSelector: ls("pod", "b")}}, pPort(corev1.ProtocolTCP, named("http"))))
	pol.UID, pol.ResourceVersion = "pol-uid", "1"
	rr := NewRenderer(DefaultConfig())
	check := func(step string, pols ...*networkingv1.NetworkPolicy) {
		t.Helper()
		in := Input{Policies: pols, Pods: c.pods, Namespaces: c.namespaces, Endpoints: c.endpoints(1)}
		got, want := rr.Render(in), Render(DefaultConfig(), in)
		if got.RestoreText() != want.RestoreText() || got.IPSetRestoreText() != want.IPSetRestoreText() {
			t.Fatalf("%s: cached render differs", step)
		}
	}
	check("first", pol)
	check("again", pol)
	// A pod update arrives as a new object with a new resourceVersion.
	for i, p := range c.pods {
		if p.Namespace == "x" && p.Name == "c" {
			q := p.DeepCopy()
			q.Labels = map[string]string{"pod": "b"}
			q.ResourceVersion = "2"
			c.pods[i] = q
		}
	}
	check("pod relabelled", pol)
	// Informer listers return objects in random order.
	rand.Shuffle(len(c.pods), func(i, j int) { c.pods[i], c.pods[j] = c.pods[j], c.pods[i] })
	check("pods reordered", pol)
	pol2 := pol.DeepCopy()
	pol2.ResourceVersion = "2"
	pol2.Spec.Ingress[0].Ports = nil
	check("policy updated", pol2)
	check("policy deleted")
	if len(rr.policies) != 0 {
		t.Fatalf("deleted policy still cached")
	}
	// Record addresses must not leak into the cached pod infos.
	p := c.pod(ref{"x", "b"})
	p.Status.PodIP, p.Status.PodIPs, p.ResourceVersion = "", nil, "3"
	check("record-only address", pol2)
	check("record-only address again", pol2)
}
