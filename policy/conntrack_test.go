package policy

import (
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/internal/conntrack"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

func ctFlow(proto uint8, src netip.Addr, dst netip.Addr, dport uint16) conntrack.Flow {
	return conntrack.Flow{Proto: proto, Orig: conntrack.Tuple{Src: src, Dst: dst, SPort: 40000, DPort: dport},
		Reply: conntrack.Tuple{Src: dst, Dst: src, SPort: dport, DPort: 40000}}
}

// TestFlowReaper: after x/b becomes isolated for ingress (only x/a on TCP
// 80), exactly the entries whose original direction the new rules deny go,
// judged by the rendered rules (bridged, routed, through DNAT); flows of the
// host and of endpoints whose rules did not change are not looked at, and
// one-way allowed flows stay.
func TestFlowReaper(t *testing.T) {
	c := rulestest.NewCluster()
	eps := c.Endpoints(1)
	fk := &conntrack.Fake{Local: []netip.Addr{netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.244.1.1")}}
	f := newFlowReaper(fk, "weft0", slog.New(slog.DiscardHandler), nil)
	xa, xb, ya, za := rulestest.IPOf(rulestest.Ref{NS: "x", Pod: "a"}), rulestest.IPOf(rulestest.Ref{NS: "x", Pod: "b"}), rulestest.IPOf(rulestest.Ref{NS: "y", Pod: "a"}), rulestest.IPOf(rulestest.Ref{NS: "z", Pod: "a"})
	yb := rulestest.IPOf(rulestest.Ref{NS: "y", Pod: "b"}) // on node 2
	svc := netip.MustParseAddr("10.96.0.10")
	dnat := func(src netip.Addr, backend netip.Addr, port uint16) conntrack.Flow {
		fl := ctFlow(6, src, svc, 443)
		fl.Reply.Src, fl.Reply.SPort = backend, port
		return fl
	}
	keep := []conntrack.Flow{
		ctFlow(6, xa, xb, 80),                              // allowed by the policy
		ctFlow(6, netip.MustParseAddr("10.0.0.1"), xb, 22), // the host (OUTPUT): not policed here
		ctFlow(6, xb, ya, 80),                              // x/b's egress is not isolated; its reply direction would be denied
		ctFlow(17, ya, za, 80),                             // endpoints whose rules did not change
		dnat(xa, xb, 80),                                   // Service to x/b, backend port allowed
	}
	drop := []conntrack.Flow{
		ctFlow(6, ya, xb, 80),  // bridged, peer not allowed
		ctFlow(17, xa, xb, 80), // protocol not allowed
		ctFlow(6, yb, xb, 80),  // routed from another node
		dnat(xa, xb, 81),       // Service to x/b, backend port not allowed
	}
	fk.Add(keep...)
	fk.Add(drop...)

	st0 := c.Render(1)
	f.applied(st0, eps)
	f.collect()
	if len(f.pending) != len(eps) {
		t.Fatalf("first sync: %d endpoints pending, want all %d", len(f.pending), len(eps))
	}
	if n, err := f.reap(st0, eps, f.pending); n != 0 || err != nil {
		t.Fatalf("no policy: deleted %d, %v", n, err)
	}
	f.pending = map[string]bool{}

	pol := rulestest.WithIngress(rulestest.NP("x", "b-from-a", map[string]string{"pod": "b"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "a")}}, rulestest.PPort(corev1.ProtocolTCP, rulestest.Num(80))))
	st1 := c.Render(1, pol)
	f.applied(st1, eps)
	f.collect()
	if got := slices.Sorted(maps.Keys(f.pending)); !slices.Equal(got, []string{rulestest.VethOf(rulestest.Ref{NS: "x", Pod: "b"})}) {
		t.Fatalf("changed endpoints %v, want only x/b's", got)
	}
	dumps := fk.Dumps
	n, err := f.reap(st1, eps, f.pending)
	if err != nil || n != len(drop) {
		t.Errorf("deleted %d (%v), want %d", n, err, len(drop))
	}
	if fk.Dumps != dumps+1 {
		t.Errorf("%d dumps for one reap, want 1", fk.Dumps-dumps)
	}
	if got := fk.Flows(); !slices.Equal(got, keep) {
		t.Errorf("kept %v\nwant %v", got, keep)
	}
	f.pending = map[string]bool{}

	// The same State again: nothing to do.
	f.applied(c.Render(1, pol), eps)
	f.collect()
	if len(f.pending) != 0 {
		t.Errorf("unchanged rules: %v pending", f.pending)
	}
	// x/c (node 2) becomes an "a": only the set x/b's chain matches on
	// changes, and only x/b is looked at again.
	c.Pod(rulestest.Ref{NS: "x", Pod: "c"}).Labels["pod"] = "a"
	f.applied(c.Render(1, pol), eps)
	f.collect()
	if got := slices.Sorted(maps.Keys(f.pending)); !slices.Equal(got, []string{rulestest.VethOf(rulestest.Ref{NS: "x", Pod: "b"})}) {
		t.Errorf("after a peer's label change: changed %v, want only x/b's", got)
	}
	// A change and its undo between two looks of the worker still count:
	// entries made under the middle State may be denied by the last.
	f.pending = map[string]bool{}
	f.applied(c.Render(1), eps)
	f.applied(c.Render(1, pol), eps)
	f.collect()
	if got := slices.Sorted(maps.Keys(f.pending)); !slices.Equal(got, []string{rulestest.VethOf(rulestest.Ref{NS: "x", Pod: "b"})}) {
		t.Errorf("policy removed and restored: changed %v, want x/b's", got)
	}
}
