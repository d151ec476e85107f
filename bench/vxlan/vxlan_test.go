// Package vxlan benchmarks pod-to-pod traffic across two emulated nodes over
// weft's VXLAN backend, in the same run as the raw underlay between the
// node namespaces and a hand-built kernel VXLAN (same VNI, port, MTU,
// static FDB/neighbour/route, no weft) between the same namespaces.
//
//	go test -run '^$' -bench . -benchtime 1x ./bench/vxlan/
package vxlan

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/vxlan"
)

const (
	iperfSeconds = 3
	rrSeconds    = 3
)

// rr measures 1-byte TCP request/response transactions per second.
func rr(b *testing.B, from, to ns.NetNS, dst netip.Addr) float64 {
	b.Helper()
	var ln net.Listener
	if err := to.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", netip.AddrPortFrom(dst, 7100).String())
		return err
	}); err != nil {
		b.Fatalf("listen: %v", err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		buf := make([]byte, 1)
		for {
			if _, err := io.ReadFull(c, buf); err != nil {
				return
			}
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
	}()
	var c net.Conn
	if err := from.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", netip.AddrPortFrom(dst, 7100).String(), 3*time.Second)
		return err
	}); err != nil {
		b.Fatalf("dial: %v", err)
	}
	defer c.Close()
	buf := []byte{'x'}
	n := 0
	start := time.Now()
	for time.Since(start) < rrSeconds*time.Second {
		if _, err := c.Write(buf); err != nil {
			b.Fatalf("rr write: %v", err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatalf("rr read: %v", err)
		}
		n++
	}
	return float64(n) / time.Since(start).Seconds()
}

type figures struct{ g1, g4, rr float64 }

func measure(b *testing.B, from, to ns.NetNS, dst netip.Addr) figures {
	return figures{g1: nettopo.IPerf3(b, from, to, dst, 1, iperfSeconds), g4: nettopo.IPerf3(b, from, to, dst, 4, iperfSeconds), rr: rr(b, from, to, dst)}
}

func sh(b *testing.B, n ns.NetNS, args ...string) string {
	b.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.Path()}, args...)...).CombinedOutput()
	if err != nil {
		b.Fatalf("%v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// handBuilt sets up kernel VXLAN between the nodes with ip(8) and bridge(8)
// only: the same VNI, port, MTU and per-peer entries weft programs.
func handBuilt(b *testing.B, nodes []*nettopo.Node) {
	b.Helper()
	macs := map[int]string{}
	for _, n := range nodes {
		sh(b, n.NS, "ip", "link", "add", "hand.vxlan", "type", "vxlan", "id", "1", "dstport", "8472",
			"local", n.UnderlayIP.String(), "dev", "eth0", "nolearning")
		sh(b, n.NS, "ip", "link", "set", "hand.vxlan", "mtu", "1450", "up")
		sh(b, n.NS, "ip", "addr", "add", n.PodCIDR.Addr().String()+"/32", "dev", "hand.vxlan")
		f := strings.Fields(sh(b, n.NS, "ip", "-br", "link", "show", "hand.vxlan"))
		if len(f) < 3 {
			b.Fatalf("hand.vxlan: %v", f)
		}
		macs[n.Index] = f[2]
	}
	for _, n := range nodes {
		for _, p := range nodes {
			if p == n {
				continue
			}
			gw := p.PodCIDR.Addr().String()
			sh(b, n.NS, "bridge", "fdb", "append", macs[p.Index], "dev", "hand.vxlan", "dst", p.UnderlayIP.String())
			sh(b, n.NS, "ip", "neigh", "add", gw, "lladdr", macs[p.Index], "dev", "hand.vxlan", "nud", "permanent")
			sh(b, n.NS, "ip", "route", "add", p.PodCIDR.String(), "via", gw, "dev", "hand.vxlan", "onlink")
		}
	}
}

// rounds of (underlay, weft, hand-built), interleaved so that load from
// elsewhere on the machine hits all three alike; the median is reported.
const rounds = 5

// guardPeers is how many extra peers the encapsulation guard holds.
const guardPeers = 100

func startWeft(b *testing.B, nodes []*nettopo.Node) []*vxlan.Backend {
	b.Helper()
	var backends []*vxlan.Backend
	var peers []backend.Peer
	for _, n := range nodes {
		k, err := vxlan.NewNetlinkAt(n.NS.Path())
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(k.Close)
		mode, err := iptables.Detect(context.Background(), n.NS.Path())
		if err != nil {
			b.Fatal(err)
		}
		guard := encapguard.NewIPTables(iptables.Runner{Mode: mode, NetNS: n.NS.Path()})
		quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
		be := vxlan.New(vxlan.Config{VNI: 1, Port: 8472}, k, route.New(route.NewNetlink(k.Handle()), quiet), guard, quiet)
		pub, err := be.Start(context.Background(), n.Local())
		if err != nil {
			b.Fatal(err)
		}
		backends = append(backends, be)
		peers = append(peers, backend.Peer{Name: n.Name, UnderlayIP: n.UnderlayIP, PodCIDRs: []netip.Prefix{n.PodCIDR},
			Backends: []string{vxlan.Type}, Attrs: pub.Attrs})
	}
	// Peers that exist only on paper, sorted before the real one, so every
	// VXLAN packet walks the guard's longest path (one u32 rule per peer).
	for i := range guardPeers {
		peers = append(peers, backend.Peer{Name: fmt.Sprintf("paper%d", i), UnderlayIP: netip.AddrFrom4([4]byte{192, 168, 1, byte(i + 1)}),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(100 + i), 0}), 24)},
			Backends: []string{vxlan.Type}, Attrs: map[string]string{vxlan.AnnoVTEPMAC: fmt.Sprintf("02:00:00:00:01:%02x", i)}})
	}
	for _, be := range backends {
		if _, err := be.Apply(context.Background(), peers); err != nil {
			b.Fatal(err)
		}
	}
	return backends
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func BenchmarkPodToPodAcrossNodes(b *testing.B) {
	testutil.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 missing (make deps): %v", err)
	}
	u := nettopo.NewUnderlay(b)
	nodes := []*nettopo.Node{u.AddNode(b, 1), u.AddNode(b, 2)}
	p1, p2 := nodes[0].AddPod(b, 1450), nodes[1].AddPod(b, 1450)
	for range b.N {
		all := map[string][]figures{}
		for range rounds {
			all["underlay"] = append(all["underlay"], measure(b, nodes[0].NS, nodes[1].NS, nodes[1].UnderlayIP))

			backends := startWeft(b, nodes)
			all["weft"] = append(all["weft"], measure(b, p1.NS, p2.NS, p2.IP))
			for _, be := range backends {
				if err := be.Stop(context.Background(), true); err != nil {
					b.Fatal(err)
				}
			}

			handBuilt(b, nodes)
			all["hand"] = append(all["hand"], measure(b, p1.NS, p2.NS, p2.IP))
			for _, n := range nodes {
				sh(b, n.NS, "ip", "link", "del", "hand.vxlan")
			}
		}
		med := map[string]figures{}
		for name, fs := range all {
			var g1, g4, r []float64
			for _, f := range fs {
				g1, g4, r = append(g1, f.g1), append(g4, f.g4), append(r, f.rr)
			}
			med[name] = figures{g1: median(g1), g4: median(g4), rr: median(r)}
			b.ReportMetric(med[name].g1, name+"-1stream-Gbit/s")
			b.ReportMetric(med[name].g4, name+"-4streams-Gbit/s")
			b.ReportMetric(med[name].rr, name+"-rr/s")
		}
		under, weft, hand := med["underlay"], med["weft"], med["hand"]
		fmt.Fprintf(os.Stderr, "\nmedian of %d interleaved rounds (iperf3 %d s, RR %d s)\n", rounds, iperfSeconds, rrSeconds)
		fmt.Fprintf(os.Stderr, "%-28s %10s %10s %10s\n", "path", "1 stream", "4 streams", "1B RR/s")
		for _, r := range []struct {
			n string
			f figures
		}{{"underlay (node eth0)", under}, {"weft.vxlan (pod->pod)", weft}, {"hand-built vxlan (pod->pod)", hand}} {
			fmt.Fprintf(os.Stderr, "%-28s %10.2f %10.2f %10.0f\n", r.n, r.f.g1, r.f.g4, r.f.rr)
		}
		fmt.Fprintf(os.Stderr, "%-28s %10.3f %10.3f %10.3f\n", "weft / hand-built", weft.g1/hand.g1, weft.g4/hand.g4, weft.rr/hand.rr)
		fmt.Fprintf(os.Stderr, "%-28s %10.3f %10.3f %10.3f\n", "weft / underlay", weft.g1/under.g1, weft.g4/under.g4, weft.rr/under.rr)
		fmt.Fprintf(os.Stderr, "%-28s %10.3f %10.3f %10.3f\n", "hand-built / underlay", hand.g1/under.g1, hand.g4/under.g4, hand.rr/under.rr)
	}
}
