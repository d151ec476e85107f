package policybench

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/policy/rules"
)

const srcCheckRounds = 7

// BenchmarkSourceCheck: what the anti-spoofing check costs every forwarded
// packet from a pod as the node's endpoint count grows. Same-node pod to pod
// across weft0 (br_netfilter on), no NetworkPolicy, with the policy
// dataplane for 2 local endpoints (the two pods) vs 110 (the kubelet's
// default pod limit; 108 more endpoints with veth names like the plugin's).
// The client's veth sorts last, the worst place in a list walked in order.
// Per round: one TCP stream (Gbit/s) and 1-byte UDP request/response
// (thousands of transactions/s and the 10th percentile RTT: one packet each
// way, so the per-packet cost is not amortised); 7 interleaved rounds,
// medians reported. WEFT_BENCH_IPTABLES=legacy|nft picks the backend
// (default: what the namespace detects).
func BenchmarkSourceCheck(b *testing.B) {
	for _, tool := range []string{"iperf3"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Fatalf("%s missing: run make deps", tool)
		}
	}
	u := nettopo.NewUnderlay(b)
	node := u.AddNode(b, 1)
	srv, cli := node.AddPod(b, 1500), node.AddPod(b, 1500)
	if err := nettopo.Sysctl(node.NS, "/proc/sys/net/bridge/bridge-nf-call-iptables", "1"); err != nil {
		b.Fatal(err)
	}
	// Plugin-style names: the server sorts first, the client last.
	veths := map[string]string{"vpod1": "wv0000000000000", "vpod2": "wvfffffffffffff"}
	for old, name := range veths {
		l, err := node.H.LinkByName(old)
		if err == nil {
			err = node.H.LinkSetDown(l)
		}
		if err == nil {
			err = node.H.LinkSetName(l, name)
		}
		if err == nil {
			err = node.H.LinkSetUp(l)
		}
		if err != nil {
			b.Fatalf("rename %s: %v", old, err)
		}
	}
	cfg := rules.Config{Bridge: "weft0", AllowMark: 0x100000}
	small := srcCheckInput(map[string]netip.Addr{"wv0000000000000": srv.IP, "wvfffffffffffff": cli.IP}, 0)
	large := srcCheckInput(map[string]netip.Addr{"wv0000000000000": srv.IP, "wvfffffffffffff": cli.IP}, 108)
	ctx := context.Background()
	mode, err := iptables.Detect(ctx, node.NS.Path())
	if err != nil {
		b.Fatal(err)
	}
	if m := os.Getenv("WEFT_BENCH_IPTABLES"); m != "" { // legacy or nft
		mode = iptables.Mode(m)
	}
	w := policy.NewWriter(iptables.Runner{Mode: mode, NetNS: node.NS.Path()}, nil)
	defer func() { _, _ = w.Apply(ctx, &rules.State{}, true) }()
	states := []*rules.State{{}, rules.Render(cfg, small), rules.Render(cfg, large)}
	names := []string{"none", "2-endpoints", "110-endpoints"}
	b.Logf("%s: source check of 110 endpoints renders %d rules in %d chains", mode,
		rulesIn(states[2], "WEFT-POL-SRC"), chainsIn(states[2], "WEFT-POL-SRC"))
	tcp := make([][]float64, len(states))
	udp := make([][]float64, len(states))
	rtt := make([][]float64, len(states))
	for round := 0; round < max(srcCheckRounds, b.N); round++ {
		for i, st := range states {
			if _, err := w.Apply(ctx, st, true); err != nil {
				b.Fatal(err)
			}
			tcp[i] = append(tcp[i], nettopo.IPerf3(b, cli.NS, srv.NS, srv.IP, 1, iperfSeconds))
			k, p10 := udpRR(b, cli.NS, srv.NS, srv.IP, iperfSeconds)
			udp[i], rtt[i] = append(udp[i], k), append(rtt[i], p10)
		}
	}
	for i, n := range names {
		b.ReportMetric(median(tcp[i]), n+"-Gbit/s")
		b.ReportMetric(median(udp[i]), n+"-udp-rr-k/s")
		b.ReportMetric(median(rtt[i]), n+"-rtt-p10-µs")
		b.Logf("%s: TCP %.2f Gbit/s, UDP RR %.1f k/s, RTT p10 %.1f µs", n, tcp[i], udp[i], rtt[i])
	}
	b.ReportMetric(median(tcp[2])/median(tcp[1]), "tcp-110/2")
	b.ReportMetric(median(udp[2])/median(udp[1]), "udp-rr-110/2")
	b.ReportMetric(median(rtt[2])-median(rtt[1]), "rtt-p10-110-minus-2-µs")
}

// srcCheckInput is two real pods (veth -> address) and extra endpoints
// with plugin-style veth names and addresses of their own.
func srcCheckInput(pods map[string]netip.Addr, extra int) rules.Input {
	var in rules.Input
	in.Namespaces = []*corev1.Namespace{{ObjectMeta: metav1.ObjectMeta{Name: "perf"}}}
	add := func(veth string, ip netip.Addr) {
		name := "p-" + veth
		in.Pods = append(in.Pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "perf", Name: name, UID: types.UID(name)},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}}}})
		in.Endpoints = append(in.Endpoints, endpoint.Endpoint{PodNamespace: "perf", PodName: name, PodUID: name,
			HostVeth: veth, IPs: []string{ip.String() + "/24"}})
	}
	for v, ip := range pods {
		add(v, ip)
	}
	for i := 0; i < extra; i++ {
		h := sha256.Sum256([]byte(fmt.Sprint("extra", i)))
		add("wv"+hex.EncodeToString(h[:])[:13], netip.AddrFrom4([4]byte{10, 244, 1, byte(10 + i)}))
	}
	return in
}

func rulesIn(st *rules.State, prefix string) (n int) {
	for _, c := range st.Chains {
		if len(c.Name) >= len(prefix) && c.Name[:len(prefix)] == prefix {
			n += len(c.Rules)
		}
	}
	return n
}

func chainsIn(st *rules.State, prefix string) (n int) {
	for _, c := range st.Chains {
		if len(c.Name) >= len(prefix) && c.Name[:len(prefix)] == prefix {
			n++
		}
	}
	return n
}

// udpRR is UDP request/response with 1-byte payloads between two
// namespaces for the given seconds: thousands of transactions per second,
// and the 10th percentile of the round-trip times in µs. Every transaction
// is one packet each way, so per-packet costs show in full (a TCP stream
// amortises them over 64 KB GSO segments), and a low percentile of the
// RTT is what a loaded machine disturbs least.
func udpRR(b *testing.B, from, to ns.NetNS, dst netip.Addr, seconds int) (kps, p10 float64) {
	b.Helper()
	var srv, cli net.PacketConn
	if err := to.Do(func(ns.NetNS) error {
		var err error
		srv, err = net.ListenPacket("udp4", netip.AddrPortFrom(dst, 7200).String())
		return err
	}); err != nil {
		b.Fatalf("listen: %v", err)
	}
	defer srv.Close()
	go func() {
		buf := make([]byte, 16)
		for {
			n, peer, err := srv.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteTo(buf[:n], peer)
		}
	}()
	if err := from.Do(func(ns.NetNS) error {
		var err error
		cli, err = net.ListenPacket("udp4", ":0")
		return err
	}); err != nil {
		b.Fatalf("client socket: %v", err)
	}
	defer cli.Close()
	to4 := net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, 7200))
	buf := []byte{'x'}
	var rtts []time.Duration
	start := time.Now()
	for time.Since(start) < time.Duration(seconds)*time.Second {
		_ = cli.SetReadDeadline(time.Now().Add(time.Second))
		t0 := time.Now()
		if _, err := cli.WriteTo(buf, to4); err != nil {
			b.Fatalf("udp rr write: %v", err)
		}
		if _, _, err := cli.ReadFrom(buf); err != nil {
			continue // lost (first packets wait for ARP): send again
		}
		rtts = append(rtts, time.Since(t0))
	}
	if len(rtts) == 0 {
		b.Fatal("udp rr: no answer")
	}
	kps = float64(len(rtts)) / time.Since(start).Seconds() / 1e3
	slices.Sort(rtts)
	return kps, float64(rtts[len(rtts)/10].Nanoseconds()) / 1e3
}
