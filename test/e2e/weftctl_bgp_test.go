package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

// bgpNode is weftctl bgp's JSON of one node (cmd/weftctl NodeBGP).
type bgpNode struct {
	Node, Error        string
	Running, Reachable bool
	Sessions           []struct {
		Peer, State string
		ASN         uint32
	}
	Routes []struct{ Prefix string }
}

// checkWeftctlBGP runs weftctl bgp on checkBGP's full mesh (TestVXLANMesh
// on the bgp backend, ipipMode Never): every node answers, runs bgp, has
// an established session with each other node's underlay address
// (AS64512) and nothing else, and a route to each other node's pod CIDR
// and nothing else, in JSON and in the table, exit 0. With one node's
// weftd stopped, that node is named as not answering (exit 1) and the
// others are listed as before.
func checkWeftctlBGP(t *testing.T, ctx context.Context, nodes []*corev1.Node) {
	w := buildWeftctl(t, ctx)
	var res struct{ Nodes []bgpNode }
	w.json(ctx, &res, 0, "bgp")
	checkBGPRows(t, nodes, res.Nodes, "")
	out, errs, code := w.run(ctx, "bgp")
	if code != 0 || !strings.HasPrefix(out, "NODE") {
		t.Errorf("weftctl bgp table: exit %d: %s%s", code, errs, out)
	}
	checkBGPTable(t, nodes, out, "")

	stopped := nodes[len(nodes)-1].Name
	thaw := stopWeftd(t, stopped)
	defer thaw()
	var part struct{ Nodes []bgpNode } // fresh: Unmarshal keeps fields the JSON omits
	w.json(ctx, &part, 1, "bgp", "--node-timeout", "3s")
	checkBGPRows(t, nodes, part.Nodes, stopped)
	out, errs, code = w.run(ctx, "bgp", "--node-timeout", "3s")
	if code != 1 || !lineWith(out, stopped, "weftd", "not", "answering:") {
		t.Errorf("weftctl bgp table with %s's weftd stopped: exit %d, want 1 and %s not answering:\n%s%s", stopped, code, stopped, out, errs)
	}
	checkBGPTable(t, nodes, out, stopped)
	thaw()
}

// wantBGP is what node n must show: a session with each other node's
// underlay address and a route to each other node's pod CIDR.
func wantBGP(nodes []*corev1.Node, n string) (peers, prefixes map[string]bool) {
	peers, prefixes = map[string]bool{}, map[string]bool{}
	for _, p := range others(nodes, n) {
		peers[internalIP(p)] = true
		prefixes[p.Annotations[annoPodCIDR]] = true
	}
	return peers, prefixes
}

// checkBGPRows checks weftctl bgp's JSON rows; stopped ("" for none) must
// be the one unreachable node.
func checkBGPRows(t *testing.T, nodes []*corev1.Node, rows []bgpNode, stopped string) {
	t.Helper()
	if len(rows) != len(nodes) {
		t.Errorf("weftctl bgp: %d nodes, want %d: %+v", len(rows), len(nodes), rows)
	}
	for _, r := range rows {
		if r.Node == stopped {
			if r.Reachable || r.Error == "" || len(r.Sessions) != 0 {
				t.Errorf("weftctl bgp, %s's weftd stopped: %+v, want unreachable with an error", stopped, r)
			}
			continue
		}
		peers, prefixes := wantBGP(nodes, r.Node)
		bad := []string{}
		for _, s := range r.Sessions {
			if !peers[s.Peer] || s.State != "established" || s.ASN != 64512 {
				bad = append(bad, fmt.Sprintf("session %+v", s))
			}
			delete(peers, s.Peer)
		}
		for _, rt := range r.Routes {
			if !prefixes[rt.Prefix] {
				bad = append(bad, "route "+rt.Prefix)
			}
			delete(prefixes, rt.Prefix)
		}
		if !r.Reachable || !r.Running || len(bad)+len(peers)+len(prefixes) > 0 {
			t.Errorf("weftctl bgp on %s: reachable=%v running=%v, unexpected %v, missing sessions %v, missing routes %v (%+v)",
				r.Node, r.Reachable, r.Running, bad, peers, prefixes, r)
		}
	}
}

// checkBGPTable checks that the table has a session line and a route line
// for everything each answering node must show.
func checkBGPTable(t *testing.T, nodes []*corev1.Node, out, stopped string) {
	t.Helper()
	for _, n := range nodes {
		if n.Name == stopped {
			continue
		}
		peers, prefixes := wantBGP(nodes, n.Name)
		for p := range peers {
			if !lineWith(out, n.Name, p, "64512", "established") {
				t.Errorf("weftctl bgp table: no established session line %s -> %s:\n%s", n.Name, p, out)
			}
		}
		for p := range prefixes {
			if !lineWith(out, n.Name, p, "route", "installed") {
				t.Errorf("weftctl bgp table: no route line %s %s:\n%s", n.Name, p, out)
			}
		}
	}
}
