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
	"net/netip"
	"os"
	"os/exec"
	"testing"

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

func measure(b *testing.B, from, to ns.NetNS, dst netip.Addr) nettopo.Figures {
	return nettopo.Measure(b, from, to, dst, iperfSeconds, rrSeconds)
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

func BenchmarkPodToPodAcrossNodes(b *testing.B) {
	testutil.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 missing (make deps): %v", err)
	}
	u := nettopo.NewUnderlay(b)
	nodes := []*nettopo.Node{u.AddNode(b, 1), u.AddNode(b, 2)}
	p1, p2 := nodes[0].AddPod(b, 1450), nodes[1].AddPod(b, 1450)
	for range b.N {
		all := map[string][]nettopo.Figures{}
		for range rounds {
			all["underlay"] = append(all["underlay"], measure(b, nodes[0].NS, nodes[1].NS, nodes[1].UnderlayIP))

			backends := startWeft(b, nodes)
			all["weft"] = append(all["weft"], measure(b, p1.NS, p2.NS, p2.IP))
			for _, be := range backends {
				if err := be.Stop(context.Background(), true); err != nil {
					b.Fatal(err)
				}
			}

			nettopo.HandVXLAN(b, nodes)
			all["hand"] = append(all["hand"], measure(b, p1.NS, p2.NS, p2.IP))
			for _, n := range nodes {
				nettopo.Sh(b, n.NS, "ip", "link", "del", "hand.vxlan")
			}
		}
		med := nettopo.Medians(b, all)
		under, weft, hand := med["underlay"], med["weft"], med["hand"]
		fmt.Fprintf(os.Stderr, "\nmedian of %d interleaved rounds (iperf3 %d s, RR %d s)\n", rounds, iperfSeconds, rrSeconds)
		fmt.Fprintf(os.Stderr, "%-28s %10s %10s %10s\n", "path", "1 stream", "4 streams", "1B RR/s")
		for _, r := range []struct {
			n string
			f nettopo.Figures
		}{{"underlay (node eth0)", under}, {"weft.vxlan (pod->pod)", weft}, {"hand-built vxlan (pod->pod)", hand}} {
			fmt.Fprintf(os.Stderr, "%-28s %10.2f %10.2f %10.0f\n", r.n, r.f.G1, r.f.G4, r.f.RR)
		}
		fmt.Fprintf(os.Stderr, "%-28s %10.3f %10.3f %10.3f\n", "weft / hand-built", weft.G1/hand.G1, weft.G4/hand.G4, weft.RR/hand.RR)
		fmt.Fprintf(os.Stderr, "%-28s %10.3f %10.3f %10.3f\n", "weft / underlay", weft.G1/under.G1, weft.G4/under.G4, weft.RR/under.RR)
		fmt.Fprintf(os.Stderr, "%-28s %10.3f %10.3f %10.3f\n", "hand-built / underlay", hand.G1/under.G1, hand.G4/under.G4, hand.RR/under.RR)
	}
}
