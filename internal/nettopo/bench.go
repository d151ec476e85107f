package nettopo

import (
	"io"
	"net"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// RR measures 1-byte TCP request/response transactions per second from
// from to a server on dst:7100 in to, for the given seconds.
func RR(b testing.TB, from, to ns.NetNS, dst netip.Addr, seconds int) float64 {
	b.Helper()
	return RRVia(b, from, to, netip.AddrPortFrom(dst, 7100), netip.AddrPortFrom(dst, 7100), seconds)
}

// RRVia is RR with the server listening on listen and the client dialling
// dst, e.g. a Service address that DNATs to listen.
func RRVia(b testing.TB, from, to ns.NetNS, listen, dst netip.AddrPort, seconds int) float64 {
	b.Helper()
	var ln net.Listener
	if err := to.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", listen.String())
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
		c, err = net.DialTimeout("tcp", dst.String(), 3*time.Second)
		return err
	}); err != nil {
		b.Fatalf("dial: %v", err)
	}
	defer c.Close()
	buf := []byte{'x'}
	n := 0
	start := time.Now()
	for time.Since(start) < time.Duration(seconds)*time.Second {
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

// Median returns the median of xs (the upper one of an even count).
func Median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// Sh runs a command inside n and returns its trimmed output.
func Sh(b testing.TB, n ns.NetNS, args ...string) string {
	b.Helper()
	out, err := exec.Command("nsenter", append([]string{"--net=" + n.Path()}, args...)...).CombinedOutput()
	if err != nil {
		b.Fatalf("%v: %v\n%s", args, err, out)
	}
	return strings.TrimSpace(string(out))
}

// HandVXLAN sets up kernel VXLAN between the nodes with ip(8) and
// bridge(8) only, device hand.vxlan: VNI 1, port 8472, MTU 1450,
// nolearning, and per peer an FDB entry, a permanent neighbour and an
// onlink route to its pod CIDR (what weft's VXLAN backend programs).
func HandVXLAN(b testing.TB, nodes []*Node) {
	b.Helper()
	macs := map[int]string{}
	for _, n := range nodes {
		Sh(b, n.NS, "ip", "link", "add", "hand.vxlan", "type", "vxlan", "id", "1", "dstport", "8472",
			"local", n.UnderlayIP.String(), "dev", "eth0", "nolearning")
		Sh(b, n.NS, "ip", "link", "set", "hand.vxlan", "mtu", "1450", "up")
		Sh(b, n.NS, "ip", "addr", "add", n.PodCIDR.Addr().String()+"/32", "dev", "hand.vxlan")
		f := strings.Fields(Sh(b, n.NS, "ip", "-br", "link", "show", "hand.vxlan"))
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
			Sh(b, n.NS, "bridge", "fdb", "append", macs[p.Index], "dev", "hand.vxlan", "dst", p.UnderlayIP.String())
			Sh(b, n.NS, "ip", "neigh", "add", gw, "lladdr", macs[p.Index], "dev", "hand.vxlan", "nud", "permanent")
			Sh(b, n.NS, "ip", "route", "add", p.PodCIDR.String(), "via", gw, "dev", "hand.vxlan", "onlink")
		}
	}
}

// Figures are one path's single-stream and four-stream TCP throughput
// (Gbit/s) and 1-byte request/response rate (transactions/s).
type Figures struct{ G1, G4, RR float64 }

// Measure takes a path's Figures from from to dst in to.
func Measure(b testing.TB, from, to ns.NetNS, dst netip.Addr, iperfSeconds, rrSeconds int) Figures {
	return Figures{G1: IPerf3(b, from, to, dst, 1, iperfSeconds), G4: IPerf3(b, from, to, dst, 4, iperfSeconds),
		RR: RR(b, from, to, dst, rrSeconds)}
}

// Medians returns, per path, the median of each figure over its rounds,
// and reports them as the benchmark's metrics.
func Medians(b *testing.B, all map[string][]Figures) map[string]Figures {
	med := map[string]Figures{}
	for name, fs := range all {
		var g1, g4, r []float64
		for _, f := range fs {
			g1, g4, r = append(g1, f.G1), append(g4, f.G4), append(r, f.RR)
		}
		med[name] = Figures{G1: Median(g1), G4: Median(g4), RR: Median(r)}
		b.ReportMetric(med[name].G1, name+"-1stream-Gbit/s")
		b.ReportMetric(med[name].G4, name+"-4streams-Gbit/s")
		b.ReportMetric(med[name].RR, name+"-rr/s")
	}
	return med
}
