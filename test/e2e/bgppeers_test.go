package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The misbehaving peers of checkBadPeers, each a bird2 speaker in its own
// namespace on subnet a.
const (
	// badAS runs AS 65003; the backend section says 65002.
	badASIP         = "172.18.0.251"
	badASConfigured = 65002
	badASActual     = 65003
	badASNet        = "198.18.0.0/24"
	// badPW wants a TCP-MD5 password the Secret's "wrong" key does not hold.
	badPWIP       = "172.18.0.252"
	badPWASN      = 65004
	badPWNet      = "198.18.1.0/24"
	badPWPassword = "the-real-password"
	// rogue is an in-cluster speaker: a Node object claims it (so every
	// node peers with it), and it announces more than its own pod CIDR.
	rogueIP   = "172.18.0.250"
	rogueNode = "rogue-node"
	rogueCIDR = "10.244.250.0/24"
	rogueNet  = "192.0.2.0/24"
)

// birdc runs birdc on speaker name ("bird": the cluster's BGP router).
func birdc(ctx context.Context, name string, args ...string) (string, error) {
	out, errOut, err := cli(ctx, append([]string{"birdc", "--speaker", name}, args...)...)
	if err != nil {
		return out, fmt.Errorf("birdc %s: %v: %s", strings.Join(args, " "), err, errOut)
	}
	return out, nil
}

// checkBird: the router learned each node's pod CIDR from that node only,
// with the node as next hop; every node installed the router's test
// network (inside acceptedPrefixes) via the router's address on its own
// subnet, and neither its other prefix nor its default route; every pod
// reaches the server behind the router over TCP and UDP.
func (tp *topo) checkBird(t *testing.T, ctx context.Context) {
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		for _, n := range tp.nodes {
			cidr := n.Annotations[annoPodCIDR]
			out, err := birdc(ctx, "bird", "show", "route", "for", cidr, "all")
			proto := strings.TrimPrefix(n.Name, "wl-")
			if err != nil || !strings.Contains(out, cidr) || strings.Count(out, " unicast [") != 1 ||
				!strings.Contains(out, "unicast ["+proto+" ") || !strings.Contains(out, "BGP.next_hop: "+internalIP(n)) {
				return false, fmt.Errorf("bird's route for %s (%s): %v\n%s", cidr, n.Name, err, out)
			}
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range tp.nodes {
		got, err := nodeRoutes(n.Name, false)
		if err != nil {
			t.Fatal(err)
		}
		own, _ := nodeRoutes(n.Name, true)
		if own[extNet] != "via "+torIP(n) {
			t.Errorf("%s: want %s via %s proto %d, have %q (Weft's routes %v)", n.Name, extNet, torIP(n), weftRtProto, got[extNet], own)
		}
		for _, dst := range []string{torOther, "0.0.0.0/0"} {
			if r, ok := got[dst]; ok {
				t.Errorf("%s: route %s %s installed, outside acceptedPrefixes", n.Name, dst, r)
			}
		}
		if v, err := readBGP(n); err != nil || v.rejected < 2 {
			t.Errorf("%s: want the router's 2 other paths rejected, /readyz says %d (%v)", n.Name, v.rejected, err)
		}
		for _, proto := range []string{"tcp", "udp"} {
			if got, err := probeAddr(ctx, tp.pods[n.Name], extServer+":"+fmt.Sprint(echoPort(proto)), proto); err != nil || !strings.HasPrefix(got, "ext-server") {
				t.Errorf("%s pod -> %s %s behind bird: %q %v", n.Name, proto, extServer, got, err)
			}
		}
	}
}

func echoPort(proto string) int {
	if proto == "udp" {
		return udpPort
	}
	return tcpPort
}

// speakerConf is a bird2 configuration: sessions with the given nodes
// (options go into each), announcing the given prefixes.
func speakerConf(id string, asn int, opts string, nodes []*corev1.Node, announce ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "router id %s;\nlog stderr all;\nprotocol device {}\nprotocol static announced { ipv4;", id)
	for _, p := range announce {
		fmt.Fprintf(&b, " route %s blackhole;", p)
	}
	fmt.Fprintf(&b, " }\ntemplate bgp peer { local %s as %d; connect retry time 1; %s\n\tipv4 { import all; export all; next hop self; }; }\n", id, asn, opts)
	for _, n := range nodes {
		fmt.Fprintf(&b, "protocol bgp %s from peer { neighbor %s as 64512; }\n", strings.TrimPrefix(n.Name, "wl-"), internalIP(n))
	}
	return b.String()
}

// startSpeaker runs a bird2 speaker through the harness until the test ends.
func startSpeaker(t *testing.T, ctx context.Context, name, addr, conf string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), name+".conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, errOut, err := cli(ctx, "speaker", "start", name, "--addr", addr, "--conf", file); err != nil {
		t.Fatalf("speaker %s: %v: %s", name, err, errOut)
	}
	t.Cleanup(func() {
		if _, errOut, err := cli(context.Background(), "speaker", "stop", name); err != nil {
			t.Errorf("stop speaker %s: %v: %s", name, err, errOut)
		}
	})
}

func (tp *topo) subnetNodes(s string) []*corev1.Node {
	var out []*corev1.Node
	for _, n := range tp.nodes {
		if subnetOf(n) == s {
			out = append(out, n)
		}
	}
	return out
}

// checkBadPeers: a peer announcing another AS than configured and one
// wanting another TCP-MD5 password get no session (the first is refused
// with Bad Peer AS, the second's kernel counts the segments it dropped),
// so their prefixes, though inside acceptedPrefixes, are never installed;
// a speaker a Node object claims (so every node peers with it) gets its
// own pod CIDR installed, but not the foreign prefix, the default route,
// another node's pod CIDR or a slice of one it announces besides, each
// rejected and counted; pod traffic is untouched.
func (tp *topo) checkBadPeers(t *testing.T, ctx context.Context) {
	n1, n2 := tp.nodes[0], tp.nodes[1]
	slice := netip.PrefixFrom(netip.MustParsePrefix(n2.Annotations[annoPodCIDR]).Addr(), 25).String()
	subA := tp.subnetNodes("a")
	startSpeaker(t, ctx, "badas", badASIP, speakerConf(badASIP, badASActual, "passive on;", subA, badASNet))
	startSpeaker(t, ctx, "badpw", badPWIP, speakerConf(badPWIP, badPWASN, fmt.Sprintf("passive on; password %q;", badPWPassword), subA, badPWNet))
	startSpeaker(t, ctx, "rogue", rogueIP, speakerConf(rogueIP, 64512, "", tp.nodes,
		rogueCIDR, n1.Annotations[annoPodCIDR], slice, rogueNet, "0.0.0.0/0"))
	tp.addRogueNode(t, ctx)

	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		for _, n := range tp.nodes {
			v, err := readBGP(n)
			if err != nil {
				return false, err
			}
			if v.sessions[rogueIP] != "established" {
				return false, fmt.Errorf("%s: session with the rogue speaker: %q", n.Name, v.sessions[rogueIP])
			}
			want := "via " + rogueIP
			if subnetOf(n) == "b" {
				want = "dev " + ipipDev
			}
			if got, _ := nodeRoutes(n.Name, true); got[rogueCIDR] != want {
				return false, fmt.Errorf("%s: the rogue's own pod CIDR %s: %q, want %q", n.Name, rogueCIDR, got[rogueCIDR], want)
			}
			if v.rejected < 6 {
				return false, fmt.Errorf("%s: %d paths rejected, want the router's 2 and the rogue's 4", n.Name, v.rejected)
			}
		}
		return true, nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range tp.nodes {
		for _, dst := range []string{rogueNet, "0.0.0.0/0", slice, badASNet, badPWNet} {
			if r := hasRoute(t, n, dst); r != "" {
				t.Errorf("%s: route %s %s installed from a bad peer", n.Name, dst, r)
			}
		}
		if n.Name != n1.Name {
			if r, _ := nodeRoutes(n.Name, true); r[n1.Annotations[annoPodCIDR]] != wantRoute(n, n1) {
				t.Errorf("%s: route to %s's pods is %q, want %q", n.Name, n1.Name, r[n1.Annotations[annoPodCIDR]], wantRoute(n, n1))
			}
		}
		if got := metricValue(nodeMetrics(t, n), "weft_bgp_routes_rejected"); got < 6 {
			t.Errorf("%s: weft_bgp_routes_rejected %v, want >= 6", n.Name, got)
		}
		tp.badSessions(t, n)
	}
	tp.badPeersRefused(t, ctx)
	probeAll(t, ctx, tp.remote)
	tp.removeRogue(t, ctx)
}

// badSessions: on subnet a the two bad peers have sessions configured and
// none is established; on subnet b none is configured.
func (tp *topo) badSessions(t *testing.T, n *corev1.Node) {
	v, err := readBGP(n)
	if err != nil {
		t.Error(err)
		return
	}
	text := nodeMetrics(t, n)
	for _, p := range []struct {
		ip  string
		asn int
	}{{badASIP, badASConfigured}, {badPWIP, badPWASN}} {
		st, ok := v.sessions[p.ip]
		series := fmt.Sprintf(`weft_bgp_session_established{asn="%d",peer="%s"}`, p.asn, p.ip)
		switch {
		case subnetOf(n) == "b" && ok:
			t.Errorf("%s: session with %s configured on subnet b", n.Name, p.ip)
		case subnetOf(n) == "a" && (!ok || st == "established"):
			t.Errorf("%s: session with bad peer %s: %q (present %v)", n.Name, p.ip, st, ok)
		case subnetOf(n) == "a" && metricValue(text, series) != 0:
			t.Errorf("%s: %s = %v, want 0", n.Name, series, metricValue(text, series))
		}
	}
}

// badPeersRefused reads the refusals on the bad peers' side. The nodes
// dial every ConnectRetry (5 s) plus GoBGP's jitter (up to 5 s more), and
// the speakers may have started between two attempts, so both wait for
// one attempt to arrive (at most refusalWait) rather than sample once.
func (tp *topo) badPeersRefused(t *testing.T, ctx context.Context) {
	const refusalWait = 30 * time.Second
	var out string
	err := waitFor(ctx, refusalWait, func() (bool, error) {
		var err error
		out, err = birdc(ctx, "badas", "show", "protocols", "all")
		return err == nil && strings.Contains(strings.ToLower(out), "bad peer as"), err
	})
	if err != nil || !strings.Contains(strings.ToLower(out), "bad peer as") {
		t.Errorf("speaker with AS %d (configured %d): want sessions refused with Bad peer AS within %v: %v\n%s", badASActual, badASConfigured, refusalWait, err, out)
	}
	if strings.Contains(out, "Established") {
		t.Errorf("speaker with the wrong AS has an established session:\n%s", out)
	}
	fails := 0
	_ = waitFor(ctx, refusalWait, func() (bool, error) {
		fails = md5Failures(t, "wl-badpw")
		return fails > 0, nil
	})
	out, _ = birdc(ctx, "badpw", "show", "protocols")
	if fails == 0 || strings.Contains(out, "Established") {
		t.Errorf("speaker with another password: kernel TCPMD5Failure %d after %v (want > 0), protocols:\n%s", fails, refusalWait, out)
	}
	t.Logf("bad peers: AS %d refused with Bad peer AS; wrong password: %d segments dropped by TCP-MD5", badASActual, fails)
}

// md5Failures is TcpExt TCPMD5Failure in namespace ns: segments whose
// TCP-MD5 signature did not verify.
func md5Failures(t *testing.T, ns string) int {
	out, err := exec.Command("ip", "netns", "exec", ns, "cat", "/proc/net/netstat").Output()
	if err != nil {
		t.Errorf("netstat of %s: %v", ns, err)
		return 0
	}
	lines := strings.Split(string(out), "\n")
	for i := 0; i+1 < len(lines); i++ {
		keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		if len(keys) == 0 || keys[0] != "TcpExt:" || len(vals) != len(keys) {
			continue
		}
		for j, k := range keys {
			if k == "TCPMD5Failure" {
				v, _ := strconv.Atoi(vals[j])
				return v
			}
		}
	}
	t.Errorf("no TcpExt TCPMD5Failure in %s", ns)
	return 0
}

// addRogueNode creates the Node object that makes the rogue speaker a
// cluster peer: running bgp, its pod CIDR, its address.
func (tp *topo) addRogueNode(t *testing.T, ctx context.Context) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: rogueNode, Annotations: map[string]string{
		"weft.dev/backend": "bgp", "weft.dev/backends": "bgp", annoPodCIDR: rogueCIDR, "weft.dev/public-ip": rogueIP}}}
	if _, err := tp.c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.c.CoreV1().Nodes().Delete(context.Background(), rogueNode, metav1.DeleteOptions{}) })
}

// removeRogue deletes the rogue's Node: every node drops the session and
// the route to its pod CIDR.
func (tp *topo) removeRogue(t *testing.T, ctx context.Context) {
	if err := tp.c.CoreV1().Nodes().Delete(ctx, rogueNode, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		for _, n := range tp.nodes {
			v, err := readBGP(n)
			if err != nil {
				return false, err
			}
			if _, ok := v.sessions[rogueIP]; ok {
				return false, fmt.Errorf("%s: session with the rogue still configured", n.Name)
			}
			if r := hasRoute(t, n, rogueCIDR); r != "" {
				return false, fmt.Errorf("%s: route %s %s after its Node went", n.Name, rogueCIDR, r)
			}
		}
		return true, nil
	}); err != nil {
		t.Error(err)
	}
}
