package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/bgp"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/tun"
)

const (
	iperfSeconds = 3
	rrSeconds    = 2
	rounds       = 3
	ipipMTU      = 1500 - 20
)

// BenchmarkDataPath measures pod-to-pod TCP across two emulated nodes, in
// interleaved rounds of one run: the raw underlay (node to node), a
// hand-built kernel VXLAN, ipipMode Never (plain routes via the peer's
// underlay address, what the bgp backend installs), ipipMode Always over
// weft's userspace IP-in-IP (bgp.UserspaceIPIP, as the backend starts it),
// and a naive IP-in-IP relay (a TUN without offloads and a raw
// IP-protocol-4 socket, one packet per syscall). With WEFT_BENCH_CPUPROFILE
// set it writes a CPU profile of the last Always round there.
func BenchmarkDataPath(b *testing.B) {
	testutil.RequireRoot(b)
	if _, err := exec.LookPath("iperf3"); err != nil {
		b.Fatalf("iperf3 missing (make deps): %v", err)
	}
	u := nettopo.NewUnderlay(b)
	nodes := []*nettopo.Node{u.AddNode(b, 1), u.AddNode(b, 2)}
	plain1, plain2 := nodes[0].AddPod(b, 1500), nodes[1].AddPod(b, 1500)
	v1, v2 := nodes[0].AddPod(b, 1450), nodes[1].AddPod(b, 1450)
	i1, i2 := nodes[0].AddPod(b, ipipMTU), nodes[1].AddPod(b, ipipMTU)
	for _, n := range nodes { // else the bridge takes its smallest port's MTU
		nettopo.Sh(b, n.NS, "ip", "link", "set", "weft0", "mtu", "1500")
	}
	measure := func(from, to *nettopo.Pod) nettopo.Figures {
		return nettopo.Measure(b, from.NS, to.NS, to.IP, iperfSeconds, rrSeconds)
	}
	for range b.N {
		all := map[string][]nettopo.Figures{}
		for range rounds {
			all["underlay"] = append(all["underlay"], measure(&nettopo.Pod{NS: nodes[0].NS}, &nettopo.Pod{NS: nodes[1].NS, IP: nodes[1].UnderlayIP}))

			nettopo.HandVXLAN(b, nodes)
			all["vxlan"] = append(all["vxlan"], measure(v1, v2))
			for _, n := range nodes {
				nettopo.Sh(b, n.NS, "ip", "link", "del", "hand.vxlan")
			}

			for i, n := range nodes {
				nettopo.Sh(b, n.NS, "ip", "route", "add", nodes[1-i].PodCIDR.String(), "via", nodes[1-i].UnderlayIP.String(), "dev", "eth0")
			}
			all["never"] = append(all["never"], measure(plain1, plain2))
			delRoutes(b, nodes)

			stop := startIPIP(b, nodes)
			stopProfile := nettopo.CPUProfile(b) // the last round's
			all["always"] = append(all["always"], measure(i1, i2))
			stopProfile()
			stop()

			stop = startNaiveIPIP(b, nodes)
			all["naive"] = append(all["naive"], measure(i1, i2))
			stop()
		}
		reportPaths(b, all)
	}
}

func delRoutes(b *testing.B, nodes []*nettopo.Node) {
	for i, n := range nodes {
		nettopo.Sh(b, n.NS, "ip", "route", "del", nodes[1-i].PodCIDR.String())
	}
}

// startIPIP runs bgp.UserspaceIPIP on both nodes, as the backend does in
// ipipMode Always, and routes the peer's pod CIDR into weft.ipip.
func startIPIP(b *testing.B, nodes []*nettopo.Node) func() {
	ctx, cancel := context.WithCancel(context.Background())
	var tuns []bgp.Tunnel
	for i, n := range nodes {
		p := nodes[1-i]
		local := n.Local()
		local.UnderlayMTU = 1500
		if err := n.NS.Do(func(ns.NetNS) error {
			t, err := bgp.UserspaceIPIP{Log: quiet()}.Start(ctx, local, ipipMTU)
			if err != nil {
				return err
			}
			tuns = append(tuns, t)
			t.SetPeers([]netip.Prefix{n.PodCIDR}, []backend.Peer{{Name: p.Name, UnderlayIP: p.UnderlayIP, PodCIDRs: []netip.Prefix{p.PodCIDR}}})
			return nil
		}); err != nil {
			b.Fatal(err)
		}
		nettopo.Sh(b, n.NS, "ip", "route", "add", p.PodCIDR.String(), "dev", tuns[i].Device())
	}
	return func() {
		cancel()
		for i, n := range nodes {
			if err := n.NS.Do(func(ns.NetNS) error { return tuns[i].Stop(true) }); err != nil {
				b.Error(err)
			}
		}
	}
}

// naiveIPIP is the reference relay: a TUN without offloads (one packet per
// read and write) and a raw IP-protocol-4 socket with default buffers (one
// sendto and one recvfrom per packet), one peer, no checks.
type naiveIPIP struct {
	dev  *tun.Native
	fd   int
	peer [4]byte
	wg   sync.WaitGroup
}

func startNaiveIPIP(b *testing.B, nodes []*nettopo.Node) func() {
	var rs []*naiveIPIP
	for i, n := range nodes {
		p := nodes[1-i]
		dev, err := tun.Open(tun.Options{Name: "naive.ipip", MTU: ipipMTU, NetNS: n.NS.Path(), NoOffload: true})
		if err != nil {
			b.Fatal(err)
		}
		r := &naiveIPIP{dev: dev, peer: p.UnderlayIP.As4()}
		if err := n.NS.Do(func(ns.NetNS) error {
			r.fd, err = unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.IPPROTO_IPIP)
			return err
		}); err != nil {
			b.Fatal(err)
		}
		r.wg.Add(2)
		go r.tx()
		go r.rx()
		rs = append(rs, r)
		nettopo.Sh(b, n.NS, "ip", "addr", "add", n.PodCIDR.Addr().String()+"/32", "dev", "naive.ipip")
		nettopo.Sh(b, n.NS, "ip", "route", "add", p.PodCIDR.String(), "dev", "naive.ipip")
	}
	return func() {
		for i, r := range rs {
			_ = unix.Shutdown(r.fd, unix.SHUT_RDWR)
			_ = unix.Close(r.fd)
			_ = r.dev.Close()
			r.wg.Wait()
			if err := tun.Remove("naive.ipip", nodes[i].NS.Path()); err != nil {
				b.Error(err)
			}
		}
	}
}

func (r *naiveIPIP) tx() {
	defer r.wg.Done()
	bufs, sizes := [][]byte{make([]byte, tun.BufSize)}, []int{0}
	to := &unix.SockaddrInet4{Addr: r.peer}
	for {
		if _, err := r.dev.Read(bufs, sizes); err != nil {
			return
		}
		_ = unix.Sendto(r.fd, bufs[0][tun.Offset:tun.Offset+sizes[0]], 0, to)
	}
}

func (r *naiveIPIP) rx() {
	defer r.wg.Done()
	buf := make([]byte, tun.BufSize)
	for {
		n, _, err := unix.Recvfrom(r.fd, buf[tun.Offset:], 0)
		if err != nil || n == 0 {
			return
		}
		ihl := int(buf[tun.Offset]&0x0f) * 4
		if n <= ihl {
			continue
		}
		// Move the inner packet to the device's offset.
		copy(buf[tun.Offset:], buf[tun.Offset+ihl:tun.Offset+n])
		_, _ = r.dev.Write([][]byte{buf[:tun.Offset+n-ihl]})
	}
}

func reportPaths(b *testing.B, all map[string][]nettopo.Figures) {
	med := nettopo.Medians(b, all)
	w := os.Stderr
	fmt.Fprintf(w, "\nmedian of %d interleaved rounds (iperf3 %d s, RR %d s)\n", rounds, iperfSeconds, rrSeconds)
	fmt.Fprintf(w, "%-34s %10s %10s %10s\n", "path", "1 stream", "4 streams", "1B RR/s")
	for _, r := range []struct{ k, n string }{{"underlay", "underlay (node eth0)"}, {"vxlan", "kernel vxlan (pod->pod)"},
		{"never", "ipipMode Never (plain routes)"}, {"always", "ipipMode Always (userspace ipip)"}, {"naive", "naive ipip relay"}} {
		f := med[r.k]
		fmt.Fprintf(w, "%-34s %10.2f %10.2f %10.0f\n", r.n, f.G1, f.G4, f.RR)
	}
	ratio := func(n, a, c string) {
		x, y := med[a], med[c]
		fmt.Fprintf(w, "%-34s %10.3f %10.3f %10.3f\n", n, x.G1/y.G1, x.G4/y.G4, x.RR/y.RR)
		b.ReportMetric(x.G1/y.G1, a+"/"+c+"-1stream")
	}
	ratio("Never / kernel vxlan", "never", "vxlan")
	ratio("Always / kernel vxlan", "always", "vxlan")
	ratio("Always / naive", "always", "naive")
	ratio("Never / underlay", "never", "underlay")
}
