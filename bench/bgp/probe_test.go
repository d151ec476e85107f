package bgp

import (
	"fmt"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipip"
	"github.com/weftnet/weft/internal/uencap"
)

// TEMPORARY probe: always (variants) vs naive, 1 stream, interleaved.
func BenchmarkProbe(b *testing.B) {
	testutil.RequireRoot(b)
	u := nettopo.NewUnderlay(b)
	nodes := []*nettopo.Node{u.AddNode(b, 1), u.AddNode(b, 2)}
	i1, i2 := nodes[0].AddPod(b, ipipMTU), nodes[1].AddPod(b, ipipMTU)
	for _, n := range nodes {
		nettopo.Sh(b, n.NS, "ip", "link", "set", "weft0", "mtu", "1500")
	}
	var list []int
	for _, f := range strings.Split(os.Getenv("PROBE_LIST"), ",") {
		x, _ := strconv.Atoi(f)
		list = append(list, x)
	}
	nr, _ := strconv.Atoi(os.Getenv("PROBE_ROUNDS"))
	if nr == 0 {
		nr = 3
	}
	profV, _ := strconv.Atoi(os.Getenv("PROBE_PROFILE_V"))
	var pf *os.File
	if p := os.Getenv("PROBE_PROFILE"); p != "" {
		pf, _ = os.Create(p)
		defer pf.Close()
	}
	res := map[string][]float64{}
	for r := 0; r < nr; r++ {
		for _, v := range list {
			ipip.ProbeVariant = v
			uencap.ProbeLock = v&1 != 0
			stop := startIPIP(b, nodes)
			if pf != nil && v == profV {
				pprof.StartCPUProfile(pf)
			}
			g := nettopo.IPerf3(b, i1.NS, i2.NS, i2.IP, 1, 3)
			if pf != nil && v == profV {
				pprof.StopCPUProfile()
				pf = nil
			}
			rr := 0.0
			if os.Getenv("PROBE_RR") != "" {
				rr = nettopo.RR(b, i1.NS, i2.NS, i2.IP, 2)
			}
			stop()
			k := fmt.Sprintf("v%d", v)
			res[k] = append(res[k], g)
			res[k+"rr"] = append(res[k+"rr"], rr)
			fmt.Fprintf(os.Stderr, "round %d variant %d: %.2f Gbit/s rr %.0f\n", r, v, g, rr)
		}
		if os.Getenv("PROBE_NAIVE") != "" {
			stop := startNaiveIPIP(b, nodes)
			g := nettopo.IPerf3(b, i1.NS, i2.NS, i2.IP, 1, 3)
			stop()
			res["naive"] = append(res["naive"], g)
			fmt.Fprintf(os.Stderr, "round %d naive: %.2f\n", r, g)
		}
	}
	for k, xs := range res {
		fmt.Fprintf(os.Stderr, "%s median %.2f %v\n", k, nettopo.Median(xs), xs)
	}
}

func init() {
	if v := os.Getenv("PROBE_V"); v != "" {
		ipip.ProbeVariant, _ = strconv.Atoi(v)
	}
}
