package bgp

import (
	"fmt"
	"net/netip"
	"testing"
)

func testNodes(n int, reflectors ...int) []Node {
	var out []Node
	for i := 1; i <= n; i++ {
		nd := Node{Name: fmt.Sprintf("n%d", i), Addr: netip.AddrFrom4([4]byte{10, 0, 0, byte(i)}), ASN: 64512,
			Labels:   map[string]string{"rack": fmt.Sprint(i % 2)},
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24)}}
		for _, r := range reflectors {
			nd.RouteReflector = nd.RouteReflector || r == i
		}
		out = append(out, nd)
	}
	return out
}

func sessionSummary(ss []Session) []string {
	var out []string
	for _, s := range ss {
		x := fmt.Sprintf("%s:%s", s.Kind, s.Peer.Addr)
		if s.Peer.External != (s.Kind == KindExternal) {
			x += "/WRONG-EXTERNAL-FLAG"
		}
		if s.Peer.Passive {
			x += "/passive"
		}
		if s.Peer.RouteReflectorClient {
			x += "/rrc=" + s.Peer.ClusterID.String()
		}
		out = append(out, x)
	}
	return out
}

func defaultCfg() BackendConfig {
	c, _ := DecodeConfig([]byte(`{"type":"bgp"}`))
	return c
}

func TestSessionsMesh(t *testing.T) {
	nodes := testNodes(3)
	nodes = append(nodes, Node{Name: "noaddr"})
	got := fmt.Sprint(sessionSummary(Sessions(nodes[1], nodes, defaultCfg(), nil)))
	if want := "[mesh:10.0.0.1 mesh:10.0.0.3/passive]"; got != want {
		t.Errorf("mesh: got %s, want %s", got, want)
	}
	cfg := defaultCfg()
	cfg.NodeToNodeMesh = false
	if got := Sessions(nodes[1], nodes, cfg, nil); len(got) != 0 {
		t.Errorf("mesh off, no reflectors: %v", sessionSummary(got))
	}
}

func TestSessionsReflectors(t *testing.T) {
	nodes := testNodes(5, 1, 2)
	cfg := defaultCfg()
	for i, want := range []string{
		"[reflector-peer:10.0.0.2/passive client:10.0.0.3/passive/rrc=244.0.0.1 client:10.0.0.4/passive/rrc=244.0.0.1 client:10.0.0.5/passive/rrc=244.0.0.1]",
		"[reflector-peer:10.0.0.1 client:10.0.0.3/passive/rrc=244.0.0.1 client:10.0.0.4/passive/rrc=244.0.0.1 client:10.0.0.5/passive/rrc=244.0.0.1]",
		"[reflector:10.0.0.1 reflector:10.0.0.2]",
		"[reflector:10.0.0.1 reflector:10.0.0.2]",
		"[reflector:10.0.0.1 reflector:10.0.0.2]",
	} {
		if got := fmt.Sprint(sessionSummary(Sessions(nodes[i], nodes, cfg, nil))); got != want {
			t.Errorf("node %d: got %s, want %s", i+1, got, want)
		}
	}
	// Reflectors are used with the mesh turned off too.
	cfg.NodeToNodeMesh = false
	if got := fmt.Sprint(sessionSummary(Sessions(nodes[3], nodes, cfg, nil))); got != "[reflector:10.0.0.1 reflector:10.0.0.2]" {
		t.Errorf("mesh off: %s", got)
	}
	// A client with another AS is not made a reflector client.
	nodes[4].ASN = 65000
	if got := Sessions(nodes[0], nodes, defaultCfg(), nil); got[3].Peer.RouteReflectorClient || got[3].Peer.ASN != 65000 {
		t.Errorf("eBGP client: %+v", got[3])
	}
}

func TestSessionsExternal(t *testing.T) {
	nodes := testNodes(3)
	cfg := defaultCfg()
	ref := &SecretRef{Name: "s", Key: "k"}
	cfg.Peers = []ExternalPeer{
		{Addr: netip.MustParseAddr("192.0.2.1"), ASN: 65100, PasswordRef: ref, NodeSelector: map[string]string{"rack": "1"},
			Accepted: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}},
		{Addr: netip.MustParseAddr("192.0.2.2"), ASN: 65101},
		{Addr: netip.MustParseAddr("10.0.0.3"), ASN: 65102}, // a node's address: the node wins
	}
	got := Sessions(nodes[0], nodes, cfg, nil) // n1: rack 1
	if s := fmt.Sprint(sessionSummary(got)); s != "[mesh:10.0.0.2/passive mesh:10.0.0.3/passive external:192.0.2.1 external:192.0.2.2]" {
		t.Fatalf("n1: %s", s)
	}
	if e := got[2]; e.PasswordRef != ref || e.Peer.ASN != 65100 || len(e.Accepted) != 1 {
		t.Errorf("external session %+v", e)
	}
	if s := fmt.Sprint(sessionSummary(Sessions(nodes[1], nodes, cfg, nil))); s != "[mesh:10.0.0.1 mesh:10.0.0.3/passive external:192.0.2.2]" {
		t.Errorf("n2 (rack 0): %s", s)
	}
	never := func(map[string]string, Node) bool { return false }
	if s := fmt.Sprint(sessionSummary(Sessions(nodes[0], nodes, cfg, never))); s != "[mesh:10.0.0.2/passive mesh:10.0.0.3/passive]" {
		t.Errorf("custom matcher: %s", s)
	}
}
