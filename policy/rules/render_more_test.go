package rules_test

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

	. "github.com/weftnet/weft/policy/rules"
	"github.com/weftnet/weft/policy/rules/rulestest"
)

func states(c *rulestest.Cluster, pols ...*networkingv1.NetworkPolicy) map[int]*State {
	return map[int]*State{1: c.Render(1, pols...), 2: c.Render(2, pols...)}
}

func mustAllow(t *testing.T, st map[int]*State, f rulestest.Flow, want bool) {
	t.Helper()
	got, why := rulestest.Allowed(st, f)
	if got != want {
		t.Errorf("%v -> %v %s/%d ct=%s: allowed=%v want %v\n%s", f.Src, f.Dst, f.Proto, f.Port, f.CT, got, want, why)
	}
}

func TestRepliesPassInvalidDrops(t *testing.T) {
	c := rulestest.NewCluster()
	st := states(c, rulestest.NP("x", "deny", nil, rulestest.TBoth), rulestest.NP("y", "deny", nil, rulestest.TBoth))
	xa, ya := rulestest.Ref{NS: "x", Pod: "a"}, rulestest.Ref{NS: "y", Pod: "a"}
	xb, yb := rulestest.Ref{NS: "x", Pod: "b"}, rulestest.Ref{NS: "y", Pod: "b"}
	for _, pair := range [][2]rulestest.Ref{{xa, ya}, {xa, xb}, {yb, xa}} {
		mustAllow(t, st, rulestest.Flow{Src: pair[0], Dst: pair[1], Proto: "tcp", Port: 80}, false)
		mustAllow(t, st, rulestest.Flow{Src: pair[0], Dst: pair[1], Proto: "tcp", Port: 80, CT: "ESTABLISHED"}, true)
		mustAllow(t, st, rulestest.Flow{Src: pair[0], Dst: pair[1], Proto: "udp", Port: 53, CT: "RELATED"}, true)
	}
	// INVALID drops even where no policy applies.
	open := states(c)
	mustAllow(t, open, rulestest.Flow{Src: xa, Dst: yb, Proto: "tcp", Port: 80, CT: "INVALID"}, false)
	mustAllow(t, open, rulestest.Flow{Src: xa, Dst: yb, Proto: "tcp", Port: 80}, true)
}

// SCTP: this kernel has no SCTP sockets, so the tracer is the proof here
// (the privileged test reads the SCTP rules back from the kernel).
func TestSCTP(t *testing.T) {
	c := rulestest.NewCluster()
	pols := []*networkingv1.NetworkPolicy{rulestest.WithIngress(rulestest.NP("x", "sctp", nil, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolSCTP, rulestest.Num(80))))}
	rulestest.RequireTruth(t, c, pols, []rulestest.Flow{sctp80, tcp80, {Proto: "sctp", Port: 81}}, func(s, d rulestest.Ref, f rulestest.Flow) bool {
		return d.NS != "x" || f.Proto == "sctp" && f.Port == 80
	})
	st := c.Render(1, pols...)
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
	c := rulestest.NewCluster()
	xa := rulestest.Ref{NS: "x", Pod: "a"}
	st := states(c, rulestest.WithIngress(rulestest.NP("x", "ext", nil, rulestest.TIn),
		rulestest.In([]rulestest.From{{IPBlock: &networkingv1.IPBlock{CIDR: "192.168.0.0/16", Except: []string{"192.168.7.0/24"}}}})))
	mustAllow(t, st, rulestest.Flow{SrcAddr: netip.MustParseAddr("192.168.1.1"), Dst: xa, Proto: "tcp", Port: 80}, true)
	mustAllow(t, st, rulestest.Flow{SrcAddr: netip.MustParseAddr("192.168.7.9"), Dst: xa, Proto: "tcp", Port: 80}, false)
	mustAllow(t, st, rulestest.Flow{SrcAddr: netip.MustParseAddr("172.16.0.1"), Dst: xa, Proto: "tcp", Port: 80}, false)
	// A selector peer never matches addresses outside the cluster's pods.
	st = states(c, rulestest.WithIngress(rulestest.NP("x", "sel", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: &metav1.LabelSelector{}}})))
	mustAllow(t, st, rulestest.Flow{SrcAddr: netip.MustParseAddr("172.16.0.1"), Dst: xa, Proto: "tcp", Port: 80}, false)
	mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "z", Pod: "c"}, Dst: xa, Proto: "tcp", Port: 80}, true)
}

func TestHostNetworkPodsAreNotPeersOrEndpoints(t *testing.T) {
	c := rulestest.NewCluster()
	host := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "y", Name: "hostpod", UID: "uid-h", Labels: map[string]string{"pod": "b"}},
		Spec:   corev1.PodSpec{HostNetwork: true},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "192.168.50.1", PodIPs: []corev1.PodIP{{IP: "192.168.50.1"}}}}
	c.Pods = append(c.Pods, host)
	st := states(c, rulestest.WithIngress(rulestest.NP("x", "from-b", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y"), PodSelector: rulestest.LS("pod", "b")}})))
	mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "y", Pod: "b"}, Dst: rulestest.Ref{NS: "x", Pod: "a"}, Proto: "tcp", Port: 80}, true)
	mustAllow(t, st, rulestest.Flow{SrcAddr: netip.MustParseAddr("192.168.50.1"), Dst: rulestest.Ref{NS: "x", Pod: "a"}, Proto: "tcp", Port: 80}, false)
	for _, s := range st[1].IPSets {
		for _, m := range s.Members {
			if m == "192.168.50.1" {
				t.Fatalf("host-network pod address in set %s", s.Name)
			}
		}
	}
}

func TestUnknownEndpointsFailClosed(t *testing.T) {
	c := rulestest.NewCluster()
	eps := append(c.Endpoints(1),
		endpoint.Endpoint{PodNamespace: "x", PodName: "ghost", PodUID: "u", HostVeth: "wvghost", IPs: []string{"10.244.1.99/24"}},
		// A record whose UID does not match the pod (a recreated pod) is not trusted either.
		endpoint.Endpoint{PodNamespace: "y", PodName: "b", PodUID: "stale", HostVeth: "wvstale", IPs: []string{"10.244.1.98/24"}})
	st := Render(DefaultConfig(), Input{Pods: c.Pods, Namespaces: c.Namespaces, Endpoints: eps})
	for _, e := range st.Endpoints {
		if (e.HostVeth == "wvghost" || e.HostVeth == "wvstale") == e.Ready {
			t.Errorf("endpoint %s ready=%v", e.HostVeth, e.Ready)
		}
	}
	xa := rulestest.IPOf(rulestest.Ref{NS: "x", Pod: "a"})
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
		{"known to known", Packet{Src: rulestest.IPOf(rulestest.Ref{NS: "x", Pod: "b"}), Dst: xa, Proto: "tcp", DPort: 80,
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
	c := rulestest.NewCluster()
	bad := rulestest.WithIngress(rulestest.NP("x", "bad", map[string]string{"pod": "a"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: "Resembles"}}}}}))
	allowAll := rulestest.WithEgress(rulestest.WithIngress(rulestest.NP("x", "allow-all", nil, rulestest.TBoth), rulestest.In(nil)), rulestest.Eg(nil))
	badProto := rulestest.WithIngress(rulestest.NP("y", "bad-proto", map[string]string{"pod": "b"}, rulestest.TIn), rulestest.In(nil, rulestest.PPort("ICMP", rulestest.Num(1))))
	badSel := rulestest.NP("z", "bad-sel", nil, rulestest.TIn)
	badSel.Spec.PodSelector = metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "k", Operator: metav1.LabelSelectorOpIn}}}
	badEnd := rulestest.WithIngress(rulestest.NP("y", "bad-end", map[string]string{"pod": "c"}, rulestest.TIn), rulestest.In(nil, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http"), 90)))
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
	for _, p := range []rulestest.Flow{tcp80, udp81} {
		for _, other := range []rulestest.Ref{{NS: "y", Pod: "a"}, {NS: "x", Pod: "b"}, {NS: "z", Pod: "c"}} {
			mustAllow(t, st, rulestest.Flow{Src: other, Dst: rulestest.Ref{NS: "x", Pod: "a"}, Proto: p.Proto, Port: p.Port}, false)
			mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "x", Pod: "a"}, Dst: other, Proto: p.Proto, Port: p.Port}, false)
		}
		mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "y", Pod: "a"}, Dst: rulestest.Ref{NS: "x", Pod: "b"}, Proto: p.Proto, Port: p.Port}, true)
		mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "x", Pod: "a"}, Dst: rulestest.Ref{NS: "y", Pod: "b"}, Proto: p.Proto, Port: p.Port}, false)
		mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "x", Pod: "c"}, Dst: rulestest.Ref{NS: "y", Pod: "b"}, Proto: p.Proto, Port: p.Port}, false)
		mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "x", Pod: "c"}, Dst: rulestest.Ref{NS: "y", Pod: "c"}, Proto: p.Proto, Port: p.Port}, false)
		mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "x", Pod: "c"}, Dst: rulestest.Ref{NS: "y", Pod: "a"}, Proto: p.Proto, Port: p.Port}, true)
		// A broken podSelector closes every pod of its namespace.
		for _, pod := range []string{"a", "b", "c"} {
			mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "y", Pod: "a"}, Dst: rulestest.Ref{NS: "z", Pod: pod}, Proto: p.Proto, Port: p.Port}, false)
		}
	}
	for _, err := range append(st[1].Errors, st[2].Errors...) {
		if !strings.Contains(err.Error(), "policy ") {
			t.Errorf("error lacks the policy name: %v", err)
		}
	}
}

func TestChangesTakeEffect(t *testing.T) {
	c := rulestest.NewCluster()
	pol := rulestest.WithIngress(rulestest.NP("x", "from-green", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("color", "green"), PodSelector: rulestest.LS("role", "client")}}))
	src, dst := rulestest.Ref{NS: "z", Pod: "b"}, rulestest.Ref{NS: "x", Pod: "a"}
	f := rulestest.Flow{Src: src, Dst: dst, Proto: "tcp", Port: 80}
	mustAllow(t, states(c, pol), f, false)
	c.Namespaces[2].Labels["color"] = "green" // namespace label change
	mustAllow(t, states(c, pol), f, false)
	c.Pod(src).Labels["role"] = "client" // pod label change
	mustAllow(t, states(c, pol), f, true)
	// A new pod appears in z with the labels: it is allowed at once.
	np := c.Pod(src).DeepCopy()
	np.Name, np.UID = "new", types.UID("uid-new")
	np.Status.PodIP, np.Status.PodIPs = "10.244.2.77", []corev1.PodIP{{IP: "10.244.2.77"}}
	c.Pods = append(c.Pods, np)
	tr := states(c, pol)[1].Trace("FORWARD", Packet{Src: netip.MustParseAddr("10.244.2.77"), Dst: rulestest.IPOf(dst), Proto: "tcp", DPort: 80,
		InIface: "weft.vxlan", OutIface: "weft0"})
	if !tr.Allowed() {
		t.Errorf("new pod not allowed: %s", tr)
	}
	// The pod goes away: its address leaves the set.
	c.Pods = c.Pods[:len(c.Pods)-1]
	tr = states(c, pol)[1].Trace("FORWARD", Packet{Src: netip.MustParseAddr("10.244.2.77"), Dst: rulestest.IPOf(dst), Proto: "tcp", DPort: 80,
		InIface: "weft.vxlan", OutIface: "weft0"})
	if tr.Allowed() {
		t.Errorf("deleted pod still allowed: %s", tr)
	}
	// Policy deletion reopens.
	mustAllow(t, states(c), rulestest.Flow{Src: rulestest.Ref{NS: "y", Pod: "c"}, Dst: dst, Proto: "tcp", Port: 80}, true)
	// Namespace deleted with its label: z/b no longer matches.
	c.Namespaces = c.Namespaces[:2]
	mustAllow(t, states(c, pol), f, false)
}

// The endpoint record carries the address before the Pod status does.
func TestRecordAddressBeforePodStatus(t *testing.T) {
	c := rulestest.NewCluster()
	p := c.Pod(rulestest.Ref{NS: "x", Pod: "b"})
	p.Status.PodIP, p.Status.PodIPs = "", nil
	st := states(c, rulestest.WithIngress(rulestest.NP("y", "from-xb", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "x"), PodSelector: rulestest.LS("pod", "b")}})))
	mustAllow(t, st, rulestest.Flow{Src: rulestest.Ref{NS: "x", Pod: "b"}, Dst: rulestest.Ref{NS: "y", Pod: "a"}, Proto: "tcp", Port: 80}, true)
}

func TestNames(t *testing.T) {
	long := strings.Repeat("n", 63)
	pi := PolicyChain(Ingress, long, long, "")
	pe := PolicyChain(Egress, long, long, "")
	if len(pi) > MaxChainName || len(pe) > MaxChainName || pi == pe || !strings.HasPrefix(pi, "WEFT-PI-") {
		t.Fatalf("long names: %q %q", pi, pe)
	}
	if pi != PolicyChain(Ingress, long, long, "") {
		t.Fatal("not deterministic")
	}
	if PolicyChain(Ingress, long, long+"x", "") == pi || PolicyChain(Ingress, long, long, "v1") == PolicyChain(Ingress, long, long, "v2") {
		t.Fatal("collision")
	}
	if got := PolicyChain(Ingress, "x", "deny", ""); got != "WEFT-PI-x.deny" {
		t.Fatalf("short name hashed: %q", got)
	}
	if n := FromChain("wv0123456789abc"); len(n) > MaxChainName || n != "WEFT-FROM-wv0123456789abc" {
		t.Fatalf("from chain %q", n)
	}
	s := PodSetName("key")
	if len(s) > MaxSetName || len(TempSetName(s)) > MaxSetName || TempSetName(s) == s || !strings.HasPrefix(s, SetPrefix) {
		t.Fatalf("set names %q %q", s, TempSetName(s))
	}
	// Every name rendered for a large policy set fits.
	c := rulestest.NewCluster()
	var pols []*networkingv1.NetworkPolicy
	for i := 0; i < 20; i++ {
		name := strings.Repeat("p", 40+i)
		pols = append(pols, rulestest.WithIngress(rulestest.NP("x", name, nil, rulestest.TIn), rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", name)}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http")))))
	}
	st := c.Render(1, pols...)
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
	c := rulestest.NewCluster()
	pols := []*networkingv1.NetworkPolicy{
		rulestest.WithIngress(rulestest.NP("x", "a", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http")))),
		rulestest.WithEgress(rulestest.NP("y", "b", nil, rulestest.TEg), rulestest.Eg([]rulestest.From{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8"}}})),
	}
	a, b := c.Render(1, pols...), c.Render(1, pols[1], pols[0])
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
	c := rulestest.NewCluster()
	for i, p := range c.Pods {
		p.ResourceVersion = "1"
		_ = i
	}
	pol := rulestest.WithIngress(rulestest.NP("x", "p", nil, rulestest.TIn), rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "b")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Named("http"))))
	pol.UID, pol.ResourceVersion = "pol-uid", "1"
	rr := NewRenderer(DefaultConfig())
	check := func(step string, pols ...*networkingv1.NetworkPolicy) {
		t.Helper()
		in := Input{Policies: pols, Pods: c.Pods, Namespaces: c.Namespaces, Endpoints: c.Endpoints(1)}
		got, want := rr.Render(in), Render(DefaultConfig(), in)
		if got.RestoreText() != want.RestoreText() || got.IPSetRestoreText() != want.IPSetRestoreText() {
			t.Fatalf("%s: cached render differs", step)
		}
	}
	check("first", pol)
	check("again", pol)
	// A pod update arrives as a new object with a new resourceVersion.
	for i, p := range c.Pods {
		if p.Namespace == "x" && p.Name == "c" {
			q := p.DeepCopy()
			q.Labels = map[string]string{"pod": "b"}
			q.ResourceVersion = "2"
			c.Pods[i] = q
		}
	}
	check("pod relabelled", pol)
	// Informer listers return objects in random order.
	rand.Shuffle(len(c.Pods), func(i, j int) { c.Pods[i], c.Pods[j] = c.Pods[j], c.Pods[i] })
	check("pods reordered", pol)
	pol2 := pol.DeepCopy()
	pol2.ResourceVersion = "2"
	pol2.Spec.Ingress[0].Ports = nil
	check("policy updated", pol2)
	check("policy deleted")
	if rr.CachedPolicies() != 0 {
		t.Fatalf("deleted policy still cached")
	}
	// Record addresses must not leak into the cached pod infos.
	p := c.Pod(rulestest.Ref{NS: "x", Pod: "b"})
	p.Status.PodIP, p.Status.PodIPs, p.ResourceVersion = "", nil, "3"
	check("record-only address", pol2)
	check("record-only address again", pol2)
}
