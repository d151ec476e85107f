package bgp

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/nettopo"
)

const birdAS = 65100

// startBird runs bird2 in n's namespace with its own config and control
// socket in a temp dir, peering (eBGP, TCP-MD5) with node and advertising
// static prefixes. It is killed when the test ends.
func startBird(t *testing.T, n *nettopo.Node, node *netNode, password string, statics ...string) string {
	t.Helper()
	if _, err := exec.LookPath("bird"); err != nil {
		t.Fatalf("bird2 is not installed (apt-get install -y bird2): %v", err)
	}
	dir := t.TempDir()
	var routes strings.Builder
	for _, s := range statics {
		fmt.Fprintf(&routes, "\troute %s blackhole;\n", s)
	}
	conf := fmt.Sprintf(`router id %s;
protocol device {}
protocol static st { ipv4; %s }
protocol bgp weft {
	local %s as %d;
	neighbor %s as %d;
	password "%s";
	connect retry time 1;
	ipv4 { import all; export where source = RTS_STATIC; };
}
`, n.UnderlayIP, routes.String(), n.UnderlayIP, birdAS, node.node.Addr, node.node.ASN, password)
	confPath, sock := filepath.Join(dir, "bird.conf"), filepath.Join(dir, "bird.ctl")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+n.NS.Path(), "bird", "-f", "-c", confPath, "-s", sock)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start bird: %v", err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return sock
}

func birdc(t *testing.T, sock string, args ...string) string {
	t.Helper()
	out, _ := exec.Command("birdc", append([]string{"-s", sock}, args...)...).CombinedOutput()
	return string(out)
}

func TestNetnsExternalBird(t *testing.T) {
	u, nodes := newNetCluster(t, 2)
	n1, n2 := nodes[0], nodes[1]
	tor := u.AddNode(t, 9)
	cfg := defaultCfg()
	cfg.Peers = []ExternalPeer{{Addr: tor.UnderlayIP, ASN: birdAS, NodeSelector: map[string]string{"index": "1"},
		Accepted: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24")}}}
	sock := startBird(t, tor, n1, "tor-secret", "0.0.0.0/0", "198.51.100.0/24", "203.0.113.0/24", "10.244.2.0/24")
	n1.configure(t, nodes, cfg, map[netip.Addr]string{tor.UnderlayIP: "tor-secret"})
	n2.configure(t, nodes, cfg, nil)
	want := routesString([]Route{n1.routeTo(n2), {Prefix: netip.MustParsePrefix("198.51.100.0/24"), NextHop: tor.UnderlayIP}})
	waitFor(t, 30*time.Second, "node1 learns node2's CIDR and only the accepted prefix from bird", func() bool {
		return learnedString(n1.sp.learned()) == want
	})
	waitFor(t, 10*time.Second, "node1 rejects bird's other three prefixes", func() bool {
		r := n1.sp.must(helperCmd{Op: "learned"})
		got := map[string]string{}
		for _, x := range r.Rejected {
			if x.From == tor.UnderlayIP {
				got[x.Prefix.String()] = x.Reason
			}
		}
		return len(got) == 3 && got["0.0.0.0/0"] == RejectNotAccepted && got["203.0.113.0/24"] == RejectNotAccepted &&
			got["10.244.2.0/24"] == RejectNotAccepted && r.Total >= 3
	})
	waitFor(t, 20*time.Second, "bird learns node1's pod CIDR with node1 as next hop", func() bool {
		out := birdc(t, sock, "show", "route", "for", "10.244.1.1", "all")
		return strings.Contains(out, "10.244.1.0/24") && strings.Contains(out, "BGP.next_hop: "+n1.node.Addr.String())
	})
	// Only node1's own CIDR: node2's is not passed on by node1 (bird
	// would reach it through node1), and bird's routes are not passed to
	// node2 (no transit through a node).
	if out := birdc(t, sock, "show", "route", "for", "10.244.2.1"); strings.Contains(out, "10.244.2.0/24") && strings.Contains(out, "weft") {
		t.Errorf("bird learned node2's CIDR from node1:\n%s", out)
	}
	if r := n2.sp.must(helperCmd{Op: "learned"}); r.Total != 0 {
		t.Errorf("node2 was sent paths it had to reject: %+v", r.Rejected)
	}
	if n2.sp.established(tor.UnderlayIP) || len(n2.sp.states()) != 1 {
		t.Errorf("node2 is not selected by the peer's nodeSelector, but has sessions %+v", n2.sp.states())
	}
	// node2 must not install bird's prefix either (reflected via node1 it
	// would carry bird's next hop, which is no node's).
	for _, r := range n2.sp.learned() {
		if r.NextHop == tor.UnderlayIP {
			t.Errorf("node2 installed %v via the external router", r.Prefix)
		}
	}
}

// bgpOpen is a BGP OPEN message (RFC 4271) from asn with a 4-octet AS
// capability, so an AS above 65535 is carried too.
func bgpOpen(asn uint32, id netip.Addr) []byte {
	capab := []byte{2, 6, 65, 4, 0, 0, 0, 0} // optional parameter: capability 65 (4-octet AS)
	binary.BigEndian.PutUint32(capab[4:], asn)
	body := []byte{4, 0, 0, 0, 90}
	as2 := uint16(asn)
	if asn > 65535 {
		as2 = 23456
	}
	binary.BigEndian.PutUint16(body[1:], as2)
	body = append(body, id.AsSlice()...)
	body = append(body, byte(len(capab)))
	body = append(body, capab...)
	return bgpMessage(1, body)
}

func bgpMessage(typ byte, body []byte) []byte {
	m := make([]byte, 19, 19+len(body))
	for i := range 16 {
		m[i] = 0xff
	}
	binary.BigEndian.PutUint16(m[16:], uint16(19+len(body)))
	m[18] = typ
	return append(m, body...)
}

// rogueSession connects from n's namespace to addr:179, sends msg and
// returns what the speaker answers until it closes the connection.
func rogueSession(t *testing.T, n ns.NetNS, addr netip.Addr, msg []byte) []byte {
	t.Helper()
	var conn net.Conn
	err := n.Do(func(ns.NetNS) error {
		var err error
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(addr, 179).String(), 5*time.Second)
		return err
	})
	if err != nil {
		t.Fatalf("rogue connect: %v", err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(msg); err != nil {
		t.Fatalf("rogue write: %v", err)
	}
	got, _ := io.ReadAll(conn)
	return got
}

// rogueUntilNotified repeats a rogue session until the speaker answers it
// with a NOTIFICATION (after a failed session GoBGP keeps the peer Idle for
// 5 s and closes new connections without a word), and returns its code and
// subcode.
func rogueUntilNotified(t *testing.T, n ns.NetNS, addr netip.Addr, msg []byte) (byte, byte) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if code, sub, ok := notification(rogueSession(t, n, addr, msg)); ok {
			return code, sub
		}
		time.Sleep(time.Second)
	}
	t.Fatalf("no NOTIFICATION from %v in 20s", addr)
	return 0, 0
}

// notification returns the code and subcode of the first NOTIFICATION in
// a stream of BGP messages.
func notification(msgs []byte) (byte, byte, bool) {
	for len(msgs) >= 19 {
		l := int(binary.BigEndian.Uint16(msgs[16:]))
		if l < 19 || l > len(msgs) {
			return 0, 0, false
		}
		if msgs[18] == 3 && l >= 21 {
			return msgs[19], msgs[20], true
		}
		msgs = msgs[l:]
	}
	return 0, 0, false
}

func TestNetnsBadPeers(t *testing.T) {
	_, nodes := newNetCluster(t, 3)
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	cfg := defaultCfg()
	n1.configure(t, nodes, cfg, nil)
	// node3's address is a configured peer of node1, but what speaks from
	// there is a rogue: its speaker only watches.
	n3.sp.must(helperCmd{Op: "stop"})
	// node2 advertises, besides its own CIDR, a default route, node3's
	// CIDR, node1's CIDR and a foreign prefix.
	n2.configure(t, nodes, cfg, nil)
	forged := []netip.Prefix{n2.node.PodCIDRs[0], netip.MustParsePrefix("0.0.0.0/0"), n3.node.PodCIDRs[0],
		n1.node.PodCIDRs[0], netip.MustParsePrefix("203.0.113.0/24")}
	n2.sp.must(helperCmd{Op: "advertise", Prefixes: forged})
	waitFor(t, 20*time.Second, "node1 installs only node2's own CIDR and rejects the rest", func() bool {
		r := n1.sp.must(helperCmd{Op: "learned"})
		return learnedString(r.Learned) == routesString([]Route{n1.routeTo(n2)}) && len(r.Rejected) == 4 && r.Total == 4
	})
	r := n1.sp.must(helperCmd{Op: "learned"})
	reasons := map[string]string{}
	for _, x := range r.Rejected {
		reasons[x.Prefix.String()] = x.Reason
	}
	if reasons["0.0.0.0/0"] != RejectNotPodCIDR || reasons["10.244.3.0/24"] != RejectWrongNextHop || reasons["203.0.113.0/24"] != RejectNotPodCIDR || reasons["10.244.1.0/24"] != RejectOwnCIDR {
		t.Errorf("rejections %v", reasons)
	}

	// Garbage where a BGP header belongs (no marker): a NOTIFICATION,
	// message header error, and the connection is closed.
	garbage := append(make([]byte, 16), 0, 40, 1)
	garbage = append(garbage, []byte(strings.Repeat("x", 21))...)
	if code, sub := rogueUntilNotified(t, n3.topo.NS, n1.node.Addr, garbage); code != 1 {
		t.Errorf("garbage: got notification %d/%d, want code 1 (message header error)", code, sub)
	}
	// A well-formed OPEN with the wrong AS: OPEN error, bad peer AS.
	if code, sub := rogueUntilNotified(t, n3.topo.NS, n1.node.Addr, bgpOpen(65000, n3.node.Addr)); code != 2 || sub != 2 {
		t.Errorf("wrong AS: got notification %d/%d, want 2/2 (bad peer AS)", code, sub)
	}
	if n1.sp.established(n3.node.Addr) {
		t.Error("node1 established a session with the rogue")
	}
	// A real speaker with the wrong AS gets no session either.
	bad := *n3
	bad.cfg.ASN = 65000
	bad.start(t)
	bad.sp.must(helperCmd{Op: "peers", Peers: []Peer{{Addr: n1.node.Addr, ASN: DefaultASN}}})
	time.Sleep(4 * time.Second)
	if n1.sp.established(n3.node.Addr) || bad.sp.established(n1.node.Addr) {
		t.Error("a speaker with the wrong AS got a session")
	}
	// node1 survived all of it: still answering, node2 still up, its
	// route still installed.
	if !n1.sp.established(n2.node.Addr) || learnedString(n1.sp.learned()) != routesString([]Route{n1.routeTo(n2)}) {
		t.Errorf("node1 after the bad peers: states %+v learned %+v", n1.sp.states(), n1.sp.learned())
	}
}
