// Package udp benchmarks pod-to-pod TCP across two emulated nodes over
// weft's UDP relay (internal/tun + udp.Relay, on udp.Socket and on
// wireguard-go's StdNetBind), in the same run as the raw
// underlay, a hand-built kernel VXLAN between the same node namespaces,
// and a naive one-packet-per-syscall relay (Flannel's UDP design).
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/udp/
package udp

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/udp"
)

const (
	iperfSeconds = 3
	rrSeconds    = 2
	rounds       = 3
	udpMTU       = 1500 - udp.Overhead
)

// measure takes a path's figures, and the CPU cost of its 1-stream run.
func measure(b *testing.B, from, to *nettopo.Pod) (nettopo.Figures, cpuCost) {
	before := sampleCPU(b)
	g1 := nettopo.IPerf3(b, from.NS, to.NS, to.IP, 1, iperfSeconds)
	cost := costOf(before, sampleCPU(b), g1, iperfSeconds)
	return nettopo.Figures{G1: g1, G4: nettopo.IPerf3(b, from.NS, to.NS, to.IP, 4, iperfSeconds),
		RR: nettopo.RR(b, from.NS, to.NS, to.IP, rrSeconds)}, cost
}

// run measures a path into all and costs under name.
func (r *results) run(b *testing.B, name string, from, to *nettopo.Pod) {
	f, c := measure(b, from, to)
	r.all[name] = append(r.all[name], f)
	r.costs[name] = append(r.costs[name], c)
}

type results struct {
	all   map[string][]nettopo.Figures
	costs map[string][]cpuCost
}

// route gives weft.udp the node's pod CIDR address (so the ICMP errors
// the node sends to remote pods, "fragmentation needed" among them, have
// a source inside its pod CIDR and pass the peer's spoofing check) and
// routes the peer's pod CIDR through it.
func route(b *testing.B, n *nettopo.Node, dst netip.Prefix) {
	nettopo.Sh(b, n.NS, "ip", "addr", "add", n.PodCIDR.Addr().String()+"/32", "dev", "weft.udp")
	nettopo.Sh(b, n.NS, "ip", "route", "replace", dst.String(), "dev", "weft.udp")
}

// startRelays runs weft's relay on both nodes and returns its stop.
func startRelays(b *testing.B, nodes []*nettopo.Node, bind func() conn.Bind) func() []udp.Stats {
	var stops []func() udp.Stats
	for i, n := range nodes {
		peer := nodes[1-i]
		dev, err := tun.Open(tun.Options{Name: udp.DefaultDevice, MTU: udpMTU, NetNS: n.NS.Path()})
		if err != nil {
			b.Fatal(err)
		}
		var r *udp.Relay
		if err := n.NS.Do(func(ns.NetNS) error {
			r, err = udp.NewRelay(udp.Options{Device: dev, Bind: bind(), Port: udp.DefaultPort})
			return err
		}); err != nil {
			b.Fatal(err)
		}
		r.SetPeers([]netip.Prefix{n.PodCIDR}, []udp.Peer{{Name: peer.Name, UnderlayIP: peer.UnderlayIP, PodCIDRs: []netip.Prefix{peer.PodCIDR}}})
		route(b, n, peer.PodCIDR)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- r.Run(ctx) }()
		stops = append(stops, func() udp.Stats {
			cancel()
			if err := <-done; err != nil {
				b.Error(err)
			}
			if err := tun.Remove(udp.DefaultDevice, n.NS.Path()); err != nil {
				b.Error(err)
			}
			return r.Stats()
		})
	}
	return func() []udp.Stats {
		var s []udp.Stats
		for _, stop := range stops {
			s = append(s, stop())
		}
		return s
	}
}

func startNaives(b *testing.B, nodes []*nettopo.Node) func() {
	var rs []*naive
	for i, n := range nodes {
		peer := nodes[1-i]
		r, err := startNaive(n.NS.Path(), n.NS, udpMTU, netip.AddrPortFrom(peer.UnderlayIP, udp.DefaultPort))
		if err != nil {
			b.Fatal(err)
		}
		route(b, n, peer.PodCIDR)
		rs = append(rs, r)
	}
	return func() {
		for i, r := range rs {
			r.stop()
			if err := tun.Remove("weft.udp", nodes[i].NS.Path()); err != nil {
				b.Error(err)
			}
		}
	}
}

func BenchmarkUDPRelay(b *testing.B) {
	testutil.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 missing (make deps): %v", err)
	}
	u := nettopo.NewUnderlay(b)
	nodes := []*nettopo.Node{u.AddNode(b, 1), u.AddNode(b, 2)}
	// VXLAN pods at 1450, relay pods at 1472: each path at its own MTU.
	v1, v2 := nodes[0].AddPod(b, 1450), nodes[1].AddPod(b, 1450)
	r1, r2 := nodes[0].AddPod(b, udpMTU), nodes[1].AddPod(b, udpMTU)
	for _, n := range nodes { // else the bridge takes its smallest port's MTU, 1450
		nettopo.Sh(b, n.NS, "ip", "link", "set", "weft0", "mtu", "1500")
	}
	for range b.N {
		res := results{all: map[string][]nettopo.Figures{}, costs: map[string][]cpuCost{}}
		var last []udp.Stats
		for range rounds {
			res.run(b, "underlay", &nettopo.Pod{NS: nodes[0].NS}, &nettopo.Pod{NS: nodes[1].NS, IP: nodes[1].UnderlayIP})

			nettopo.HandVXLAN(b, nodes)
			res.run(b, "vxlan", v1, v2)
			for _, n := range nodes {
				nettopo.Sh(b, n.NS, "ip", "link", "del", "hand.vxlan")
			}

			stop := startRelays(b, nodes, func() conn.Bind { return udp.NewSocket() })
			stopProfile := nettopo.CPUProfile(b) // the last round's
			res.run(b, "relay", r1, r2)
			stopProfile()
			last = stop()

			stop = startRelays(b, nodes, conn.NewStdNetBind)
			res.run(b, "relay-std", r1, r2)
			stop()

			stopNaive := startNaives(b, nodes)
			res.run(b, "naive", r1, r2)
			stopNaive()
		}
		report(b, res, last)
	}
}

func report(b *testing.B, res results, stats []udp.Stats) {
	med := nettopo.Medians(b, res.all)
	w := os.Stderr
	fmt.Fprintf(w, "\nmedian of %d interleaved rounds (iperf3 %d s, RR %d s)\n", rounds, iperfSeconds, rrSeconds)
	fmt.Fprintf(w, "%-32s %10s %10s %10s\n", "path", "1 stream", "4 streams", "1B RR/s")
	for _, r := range []struct{ k, n string }{{"underlay", "underlay (node eth0)"}, {"vxlan", "kernel vxlan (pod->pod)"},
		{"relay", "weft relay, udp.Socket"}, {"relay-std", "weft relay, StdNetBind"}, {"naive", "naive relay (pod->pod)"}} {
		f := med[r.k]
		fmt.Fprintf(w, "%-32s %10.2f %10.2f %10.0f\n", r.n, f.G1, f.G4, f.RR)
	}
	ratio := func(n, a, c string) {
		x, y := med[a], med[c]
		fmt.Fprintf(w, "%-32s %10.3f %10.3f %10.3f\n", n, x.G1/y.G1, x.G4/y.G4, x.RR/y.RR)
	}
	ratio("relay / kernel vxlan", "relay", "vxlan")
	ratio("relay / naive", "relay", "naive")
	ratio("StdNetBind relay / kernel vxlan", "relay-std", "vxlan")
	ratio("StdNetBind relay / naive", "relay-std", "naive")
	ratio("relay / underlay", "relay", "underlay")
	fmt.Fprintf(w, "\nCPU seconds per GB moved, 1 stream, both nodes (median of %d rounds)\n", rounds)
	fmt.Fprintf(w, "%-32s %10s %10s %10s %10s\n", "path", "tasks", "relay", "/ vxlan", "softirq*")
	costs := map[string]cpuCost{}
	for k, cs := range res.costs {
		var t, r, g []float64
		for _, c := range cs {
			t, r, g = append(t, c.PerGB), append(r, c.RelayPerGB), append(g, c.GlobalSoftirqPerGB)
		}
		costs[k] = cpuCost{PerGB: nettopo.Median(t), RelayPerGB: nettopo.Median(r), GlobalSoftirqPerGB: nettopo.Median(g)}
		b.ReportMetric(costs[k].PerGB, k+"-cpu-s/GB")
	}
	for _, k := range []string{"underlay", "vxlan", "relay", "relay-std", "naive"} {
		c := costs[k]
		fmt.Fprintf(w, "%-32s %10.3f %10.3f %10.2f %10.3f\n", k, c.PerGB, c.RelayPerGB, c.PerGB/costs["vxlan"].PerGB, c.GlobalSoftirqPerGB)
	}
	fmt.Fprintf(w, "(tasks: iperf3 client+server, the benchmark process (relays), ksoftirqd; *softirq: machine-wide, other sessions' included)\n")
	for i, s := range stats {
		fmt.Fprintf(w, "node %d relay (last round): tx %d pkts in %d batches, rx %d pkts in %d batches, drops %v, tun %s, udp gso off %v\n",
			i+1, s.Tx.Packets, s.Tx.Batches, s.Rx.Packets, s.Rx.Batches, s.Drops, s.TUNMode, s.UDPGSOOff)
	}
}
