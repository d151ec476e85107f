package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

const annoMigration = "weft.dev/migration"

// switchStep is one backend section of the live switch and what every
// node must show once it is in effect.
type switchStep struct {
	section  string
	id       string   // weft.dev/backend and the only weft.dev/backends entry
	devs     []string // the node's weft.* links, exactly
	routeVia string   // routes to other nodes' pod CIDRs: out of this device ("" = via the owner's underlay address)
	wire     string   // the only encapsulation on the underlay (see classify)
	guards   []string // the raw-table guard chains allowed (WEFT-ENC-*)
}

var (
	stepVXLAN    = switchStep{`{"type":"vxlan","vni":1,"port":8472}`, "vxlan", []string{"weft.vxlan"}, "weft.vxlan", "vxlan/8472", []string{"WEFT-ENC-VXLAN"}}
	stepVXLAN7   = switchStep{`{"type":"vxlan","vni":7,"port":4789}`, "vxlan/7/4789", []string{"weft.vx7.4789"}, "weft.vx7.4789", "vxlan/4789", []string{"WEFT-ENC-VX7-4789"}}
	stepUDP      = switchStep{`{"type":"udp","port":8285}`, "udp", []string{"weft.udp"}, "weft.udp", "udp/8285", []string{"WEFT-ENC-UDP"}}
	stepAlways   = switchStep{`{"type":"bgp","ipipMode":"Always"}`, "bgp/ipip", []string{"weft.ipip"}, "weft.ipip", "ipip", []string{"WEFT-ENC-IPIP"}}
	stepNever    = switchStep{`{"type":"bgp","ipipMode":"Never"}`, "bgp/native", nil, "", "native", nil}
	liveSwitches = []switchStep{stepUDP, stepAlways, stepNever, stepVXLAN, stepVXLAN7, stepNever, stepUDP, stepVXLAN}
)

// testLiveSwitch moves the running cluster through every backend pair
// (vxlan -> udp -> bgp Always -> bgp Never -> vxlan -> vxlan VNI 7 port
// 4789 -> bgp Never -> udp -> vxlan) while a sequence-numbered UDP stream
// (500 datagrams/s each way) and a TCP connection (a request/response
// every 10 ms) run between pods on two nodes. Per switch it logs the time
// to converge, the datagrams lost and the longest gap, and requires: no
// datagram lost, the TCP connection unbroken, every node announcing only
// the new identity with only its devices, routes and guard chains left,
// the underlay carrying only the new encapsulation, full-size packets
// crossing both ways. An invalid section mid-way is rejected (Event,
// /readyz) while traffic continues; weftd is killed on the third node in
// the middle of the switch to VNI 7; before the switch from bgp Never to
// udp the third node leaves the cluster and it joins again in the middle
// of that migration (joinMidway), ending on udp with pods on it reaching
// the others both ways. Throughout, a NetworkPolicy admits into one pod
// on the receiving node only a labelled peer on the sending node (none of
// the streams' pods): from each ConfigMap update until the switch has
// converged, a pod beside the peer never gets an answer from it (probed
// every ~100 ms); after each switch the peer does, packets the other pod
// forges with the peer's source are dropped (and counted by WEFT-POL-SPOOF)
// and the peer's datagrams to the control plane's underlay address (outside
// the cluster network, not a node) arrive SNATed to its node's address
// (startSwitchPolicy). nodes is refreshed in place.
func testLiveSwitch(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node, remote []pair) {
	cms := c.CoreV1().ConfigMaps("kube-system")
	orig, err := cms.Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cur, err := cms.Get(context.Background(), "weft", metav1.GetOptions{}); err == nil {
			cur.Data = orig.Data
			_, _ = cms.Update(context.Background(), cur, metav1.UpdateOptions{})
		}
	})
	p := remote[0]
	a, b := openPodNS(t, p.from), openPodNS(t, p.to)
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	ab, ba := seqStream(t, sctx, a, b, 5401), seqStream(t, sctx, b, a, 5402)
	tcp := startTCPPinger(t, sctx, a, b, 5403)
	mtu := podMTU(t, a)
	t.Logf("streams %s (%s) <-> %s (%s), pod MTU %d", p.from.Name, p.from.Spec.NodeName, p.to.Name, p.to.Spec.NodeName, mtu)
	pol := startSwitchPolicy(t, ctx, c, nodes, p, remote)
	time.Sleep(time.Second)
	// The windows are contiguous: each counts every datagram sent from the
	// end of the previous one (its checks included) until 1 s after its
	// switch finished, less the last 300 ms (still in flight when counted).
	from := time.Now()
	for i, st := range liveSwitches {
		if i == 3 {
			testInvalidSectionMidway(t, ctx, c, nodes, ab, ba)
		}
		var join *joiner
		if i == 6 {
			join = removeForJoin(t, ctx, c, nodes, p)
			join.holdMigration(t)
		}
		t0 := time.Now()
		setBackend(t, ctx, c, orig.Data["net-conf.json"], st.section)
		watch := pol.watch(sctx)
		switch i {
		case 4:
			killMidway(t, ctx, c, nodes, p, st)
		case 6:
			join.joinMidway(t, ctx, c, st)
		}
		took := waitSwitched(t, ctx, c, nodes, st)
		time.Sleep(time.Second)
		pol.endWatch(t, watch, i, st)
		t1 := time.Now().Add(-300 * time.Millisecond)
		for _, s := range []*testutil.SeqStream{ab, ba} {
			sent, lost, gap, why := s.Window(from, t1)
			t.Logf("switch %d to %s (ConfigMap updated at +%s): converged in %s; %s: %d of %d datagrams lost %v, longest gap %s",
				i+1, st.id, t0.Sub(from).Round(time.Millisecond), took.Round(time.Millisecond), s.Name, lost, sent, why, gap.Round(time.Millisecond))
			if lost != 0 || gap > time.Second {
				t.Errorf("switch to %s: %s lost %d datagrams, longest gap %s (want 0 lost, gap <= 1s)", st.id, s.Name, lost, gap)
				for _, n := range []string{p.from.Spec.NodeName, p.to.Spec.NodeName} {
					logWeftd(t, n, from, t1)
				}
			}
		}
		from = t1
		if rtt, err := tcp.state(); err != nil {
			t.Fatalf("switch to %s: TCP connection broke: %v", st.id, err)
		} else {
			t.Logf("switch %d to %s: TCP connection alive, slowest request/response %s", i+1, st.id, rtt.Round(time.Millisecond))
		}
		checkWire(t, st)
		if join != nil {
			join.checkJoined(t, ctx, c, mtu, st)
		}
		checkNewPodMTU(t, nodes, mtu, st)
		for _, dir := range [][2]podNS{{a, b}, {b, a}} {
			if err := fullSizeUDP(dir[0], dir[1], mtu-28, 5404); err != nil {
				t.Errorf("switch to %s: %d-byte datagram with DF %s -> %s: %v", st.id, mtu-28, dir[0].pod.Name, dir[1].pod.Name, err)
			} else {
				t.Logf("switch %d to %s: a %d-byte datagram with DF (%d-byte packet) crossed %s -> %s", i+1, st.id, mtu-28, mtu, dir[0].pod.Name, dir[1].pod.Name)
			}
		}
		pol.check(t, ctx, i, st)
	}
	stop()
	copy(nodes, weftNodes(t, ctx, c))
}

// killMidway SIGKILLs weftd on the node outside the streams' pair as soon
// as it has started receiving st (phase 1): its restarted weftd must find
// the migration in its own annotations and the cluster finish it.
func killMidway(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node, p pair, st switchStep) {
	t.Helper()
	victim := outsider(nodes, p).Name
	pid := signalReceiving(t, ctx, c, victim, st, syscall.SIGKILL)
	t.Logf("killed weftd (pid %d) on %s in the middle of the switch to %s", pid, victim, st.id)
}

// signalReceiving waits until node receives st (waitReceiving), sends
// sig to its weftd and returns the pid.
func signalReceiving(t *testing.T, ctx context.Context, c kubernetes.Interface, node string, st switchStep, sig syscall.Signal) int {
	t.Helper()
	waitReceiving(t, ctx, c, node, st)
	pid, err := weftdPID(node)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, sig); err != nil {
		t.Fatal(err)
	}
	return pid
}

// waitReceiving waits until node announces that it receives st beside its
// old backend (phase 1).
func waitReceiving(t *testing.T, ctx context.Context, c kubernetes.Interface, node string, st switchStep) {
	t.Helper()
	if err := waitFor(ctx, time.Minute, func() (bool, error) {
		n, err := c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		d := n.Annotations[annoDecaps]
		return strings.HasPrefix(d, st.id+","), fmt.Errorf("%s decapsulates %q", node, d)
	}); err != nil {
		t.Fatal(err)
	}
}

// checkNewPodMTU checks that pods created now would get the same MTU as
// the running ones (weftd's subnet file, which weft-ipam hands to the
// plugin): a pod started on bgp Never must not get 1500 and then
// black-hole full-size packets on VXLAN.
func checkNewPodMTU(t *testing.T, nodes []*corev1.Node, want int, st switchStep) {
	t.Helper()
	for _, n := range nodes {
		pid, err := weftdPID(n.Name)
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/run/weft/subnet.json", pid))
		var f struct{ MTU int }
		if err == nil {
			err = json.Unmarshal(data, &f)
		}
		if err != nil || f.MTU != want {
			t.Errorf("%s on %s: new pods get MTU %d (%v), running ones have %d", n.Name, st.id, f.MTU, err, want)
		}
	}
}

// logWeftd logs what weftd on node said between t0 and t1 (its stdout
// file, as the node emulator keeps it).
func logWeftd(t *testing.T, node string, t0, t1 time.Time) {
	pid, err := weftdPID(node)
	if err != nil {
		return
	}
	path, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/1", pid))
	if err != nil {
		return
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return
	}
	for _, l := range strings.Split(string(data), "\n") {
		ts, _, _ := strings.Cut(strings.TrimPrefix(l, "time="), " ")
		if at, err := time.Parse(time.RFC3339Nano, ts); err == nil && !at.Before(t0) && !at.After(t1) {
			t.Logf("%s weftd: %s", node, l)
		}
	}
}

// podNS is a pod's network namespace, held open.
type podNS struct {
	pod corev1.Pod
	ns  ns.NetNS
	ip  netip.Addr
}

func openPodNS(t *testing.T, p corev1.Pod) podNS {
	t.Helper()
	// Pod netns files live in the node's mount namespace: reached through
	// the node emulator's root (weftd's is the image's when it runs from one).
	pid, err := procIn(p.Spec.NodeName, "nodeemu")
	if err != nil {
		t.Fatal(err)
	}
	uid := strings.ReplaceAll(string(p.UID), "-", "")
	n, err := ns.GetNS(fmt.Sprintf("/proc/%d/root/run/netns/wlp-%s", pid, uid[:12]))
	if err != nil {
		t.Fatalf("netns of %s: %v", p.Name, err)
	}
	t.Cleanup(func() { _ = n.Close() })
	return podNS{pod: p, ns: n, ip: netip.MustParseAddr(p.Status.PodIP)}
}

func podMTU(t *testing.T, p podNS) int {
	t.Helper()
	mtu := 0
	if err := p.ns.Do(func(ns.NetNS) error {
		l, err := netlink.LinkByName("eth0")
		if err == nil {
			mtu = l.Attrs().MTU
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return mtu
}

// seqStream runs testutil's sequence-numbered stream (500 datagrams/s)
// from one pod to another.
func seqStream(t *testing.T, ctx context.Context, from, to podNS, port int) *testutil.SeqStream {
	return testutil.StartSeqStream(t, ctx, from.pod.Name+"->"+to.pod.Name, from.ns, to.ns, to.ip, port)
}

// tcpPinger is one TCP connection carrying a request/response every 10 ms.
type tcpPinger struct {
	mu   sync.Mutex
	err  error
	slow time.Duration
}

func startTCPPinger(t *testing.T, ctx context.Context, from, to podNS, port int) *tcpPinger {
	t.Helper()
	var ln net.Listener
	if err := to.ns.Do(func(ns.NetNS) (err error) {
		ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() {
		srv, err := ln.Accept()
		if err != nil {
			return
		}
		defer srv.Close()
		_, _ = io.Copy(srv, srv)
	})
	var conn net.Conn
	if err := from.ns.Do(func(ns.NetNS) (err error) {
		conn, err = net.DialTimeout("tcp4", netip.AddrPortFrom(to.ip, uint16(port)).String(), 5*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(); _ = ln.Close(); wg.Wait() })
	pg := &tcpPinger{}
	wg.Go(func() {
		req, resp := make([]byte, 8), make([]byte, 8)
		for i := uint64(0); ctx.Err() == nil; i++ {
			start := time.Now()
			binary.BigEndian.PutUint64(req, i)
			_ = conn.SetDeadline(start.Add(10 * time.Second))
			_, err := conn.Write(req)
			if err == nil {
				_, err = io.ReadFull(conn, resp)
			}
			if err == nil && binary.BigEndian.Uint64(resp) != i {
				err = fmt.Errorf("response %d to request %d", binary.BigEndian.Uint64(resp), i)
			}
			pg.mu.Lock()
			pg.slow = max(pg.slow, time.Since(start))
			if err != nil && ctx.Err() == nil {
				pg.err = err
			}
			pg.mu.Unlock()
			if err != nil {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	return pg
}

// state returns the connection's error (nil: alive) and its slowest
// request/response so far (then resets it).
func (p *tcpPinger) state() (time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := p.slow
	p.slow = 0
	return s, p.err
}

// fullSizeUDP sends one datagram of size bytes with DF set from one pod
// to the other (a few tries: the first may teach the sender a path MTU)
// and reports whether one arrived whole.
func fullSizeUDP(from, to podNS, size, port int) error {
	var rx *net.UDPConn
	if err := to.ns.Do(func(ns.NetNS) (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		return err
	}
	defer rx.Close()
	var tx *net.UDPConn
	if err := from.ns.Do(func(ns.NetNS) (err error) {
		tx, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(to.ip, uint16(port))))
		return err
	}); err != nil {
		return err
	}
	defer tx.Close()
	raw, err := tx.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MTU_DISCOVER, unix.IP_PMTUDISC_DO)
	}); err != nil || serr != nil {
		return errors.Join(err, serr)
	}
	buf := make([]byte, size+1)
	var lastErr error
	for range 3 {
		if _, err := tx.Write(buf[:size]); err != nil {
			lastErr = fmt.Errorf("send: %w", err)
			time.Sleep(200 * time.Millisecond)
			continue
		}
		_ = rx.SetReadDeadline(time.Now().Add(time.Second))
		n, err := rx.Read(buf)
		if err == nil && n == size {
			return nil
		}
		lastErr = fmt.Errorf("received %d bytes: %v", n, err)
	}
	return lastErr
}

// waitSwitched waits until every node announces only st's identity, with
// no migration running, exactly st's weft.* devices, its routes to every
// other node and no guard chain of another identity; it returns how long
// that took, and logs when the last node announced it sends st to all.
func waitSwitched(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node, st switchStep) time.Duration {
	t.Helper()
	start := time.Now()
	var sending time.Duration
	if err := waitFor(ctx, 2*time.Minute, func() (bool, error) {
		fresh := weftNodes(t, ctx, c)
		if len(fresh) != len(nodes) {
			return false, fmt.Errorf("%d nodes", len(fresh))
		}
		if sending == 0 && !slices.ContainsFunc(fresh, func(n *corev1.Node) bool { return n.Annotations[annoBackend] != st.id }) {
			sending = time.Since(start)
			t.Logf("every node sends %s after %s", st.id, sending.Round(time.Millisecond))
		}
		for _, n := range fresh {
			an := n.Annotations
			if an[annoBackend] != st.id || an[annoDecaps] != st.id || an[annoMigration] != "" {
				return false, fmt.Errorf("%s: backend %q, decapsulates %q, migration %q", n.Name, an[annoBackend], an[annoDecaps], an[annoMigration])
			}
			if err := switchedKernel(t, ctx, n, others(fresh, n.Name), st); err != nil {
				return false, err
			}
		}
		return true, nil
	}); err != nil {
		t.Fatalf("switch to %s: %v", st.id, err)
	}
	return time.Since(start)
}

// switchedKernel checks one node's devices, routes and guard chains.
func switchedKernel(t *testing.T, ctx context.Context, n *corev1.Node, peers []*corev1.Node, st switchStep) error {
	h := nodeHandle(t, n.Name)
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return err
	}
	var devs []string
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, "weft.") {
			devs = append(devs, l.Attrs().Name)
		}
	}
	if slices.Sort(devs); !slices.Equal(devs, st.devs) {
		return fmt.Errorf("%s: weft devices %v, want %v", n.Name, devs, st.devs)
	}
	rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return err
	}
	got := map[string]string{}
	for _, r := range rs {
		if r.Dst == nil || int(r.Protocol) != weftRtProto {
			continue
		}
		l, err := h.LinkByIndex(r.LinkIndex)
		if err != nil {
			return err
		}
		got[r.Dst.String()] = l.Attrs().Name
		if st.routeVia == "" && r.Gw != nil {
			got[r.Dst.String()] = "via " + r.Gw.String()
		}
	}
	for _, p := range peers {
		want := st.routeVia
		if want == "" {
			want = "via " + internalIP(p)
		}
		if cidr := p.Annotations[annoPodCIDR]; got[cidr] != want {
			return fmt.Errorf("%s: route to %s (%s) %q, want %q (all: %v)", n.Name, cidr, p.Name, got[cidr], want, got)
		}
	}
	if len(got) != len(peers) {
		return fmt.Errorf("%s: proto-%d routes %v, want one per peer", n.Name, weftRtProto, got)
	}
	return guardChains(ctx, n.Name, st)
}

// guardChains checks that the raw table holds no guard chain but st's
// (and st's own for the encapsulations that have one).
func guardChains(ctx context.Context, node string, st switchStep) error {
	path := filepath.Join("/run/netns", node)
	mode, err := iptables.Detect(ctx, path)
	if err != nil {
		return err
	}
	out, err := exec.CommandContext(ctx, "ip", "netns", "exec", node, "iptables-"+string(mode)+"-save", "-t", "raw").Output()
	if err != nil {
		return fmt.Errorf("%s: iptables-save: %w", node, err)
	}
	var chains []string
	for _, l := range strings.Split(string(out), "\n") {
		if name, ok := strings.CutPrefix(l, ":WEFT-ENC-"); ok {
			chains = append(chains, "WEFT-ENC-"+strings.Fields(name)[0])
		}
	}
	for _, ch := range chains {
		if !slices.Contains(st.guards, ch) {
			return fmt.Errorf("%s: guard chain %s left on %s (chains %v)", node, ch, st.id, chains)
		}
	}
	if len(st.guards) > 0 && st.wire != "ipip" && !slices.Contains(chains, st.guards[0]) {
		return fmt.Errorf("%s: no guard chain %s (chains %v)", node, st.guards[0], chains)
	}
	return nil
}

// checkWire captures the underlay for a while the streams run and
// requires st's encapsulation only.
func checkWire(t *testing.T, st switchStep) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", "wl-underlay", "tcpdump", "-i", "wl-br0", "-nn", "-l", "-q",
		"udp port 8472 or udp port 4789 or udp port 8285 or ip proto 4 or net 10.244.0.0/16")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	counts := map[string]int{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if k := classify(sc.Text()); k != "" {
				counts[k]++
			}
		}
	}()
	time.Sleep(2 * time.Second)
	_ = cmd.Process.Signal(syscall.SIGINT)
	<-done
	_ = cmd.Wait()
	t.Logf("underlay on %s for 2 s: %v", st.id, counts)
	for k, n := range counts {
		if k != st.wire && n > 0 {
			t.Errorf("on %s the underlay still carries %d %s packets (all: %v)", st.id, n, k, counts)
		}
	}
	if counts[st.wire] < 100 {
		t.Errorf("on %s the underlay carried only %d %s packets (all: %v)", st.id, counts[st.wire], st.wire, counts)
	}
}

// classify names the encapsulation of one tcpdump -nn -q line:
// "12:00:00.000000 IP 172.18.0.2.41234 > 172.18.0.3.8472: UDP, length 78".
func classify(line string) string {
	f := strings.Fields(line)
	if len(f) < 5 || f[1] != "IP" {
		return ""
	}
	dst := strings.TrimSuffix(f[4], ":")
	switch {
	case len(f) > 5 && f[5] == "IP":
		return "ipip"
	case strings.HasSuffix(dst, ".8472"):
		return "vxlan/8472"
	case strings.HasSuffix(dst, ".4789"):
		return "vxlan/4789"
	case strings.HasSuffix(dst, ".8285"):
		return "udp/8285"
	case strings.HasPrefix(f[2], "10.244.") || strings.HasPrefix(dst, "10.244."):
		return "native"
	}
	return ""
}

// testInvalidSectionMidway sets a backend section that does not validate:
// every node reports it (Warning Event, /readyz) and keeps its backend;
// no datagram is lost meanwhile.
func testInvalidSectionMidway(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node, streams ...*testutil.SeqStream) {
	t.Helper()
	cms := c.CoreV1().ConfigMaps("kube-system")
	cur, err := cms.Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	before := weftNodes(t, ctx, c)
	t0 := time.Now()
	setBackend(t, ctx, c, cur.Data["net-conf.json"], `{"type":"vxlan","vni":0}`)
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		evs, err := c.CoreV1().Events("kube-system").List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		reporters := map[string]bool{}
		for _, e := range evs.Items {
			if e.InvolvedObject.Name == "weft" && e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "vni 0") &&
				e.LastTimestamp.Time.After(t0.Add(-time.Second)) {
				reporters[e.Source.Host] = true
			}
		}
		return len(reporters) == len(nodes), fmt.Errorf("%d of %d nodes reported the invalid section", len(reporters), len(nodes))
	}); err != nil {
		t.Fatal(err)
	}
	for _, n := range before {
		code, body, err := readyz(n.Name, internalIP(n))
		if err != nil || code != http.StatusServiceUnavailable || !strings.Contains(body, "vni 0") {
			t.Errorf("%s: /readyz %d %q %v, want 503 naming the section", n.Name, code, body, err)
		}
	}
	time.Sleep(2 * time.Second)
	for i, n := range weftNodes(t, ctx, c) {
		if n.Annotations[annoBackend] != before[i].Annotations[annoBackend] || n.Annotations[annoDecaps] != before[i].Annotations[annoDecaps] {
			t.Errorf("%s: the invalid section changed the backend: %q/%q -> %q/%q", n.Name, before[i].Annotations[annoBackend],
				before[i].Annotations[annoDecaps], n.Annotations[annoBackend], n.Annotations[annoDecaps])
		}
	}
	for _, s := range streams {
		sent, lost, gap, why := s.Window(t0, time.Now().Add(-500*time.Millisecond))
		t.Logf("invalid section: %s: %d of %d lost %v, longest gap %s", s.Name, lost, sent, why, gap.Round(time.Millisecond))
		if lost != 0 {
			t.Errorf("invalid section: %s lost %d datagrams", s.Name, lost)
		}
	}
}
