// Package shaping benchmarks pod bandwidth shaping: the latency of CNI
// ADD through libcni with Weft's shaping (the plugin waits until weftd's
// reconciler has the pod's classes in both HTB trees) against the same
// conflist without shaping, 100 annotated pods on one node, interleaved;
// and the round trip of a 1-byte request/response flow of a pod saturating
// its own 10 Mbit/s, under Weft's tree and under the reference bandwidth
// plugin's TBF.
package shaping

import (
	"slices"
	"testing"
	"time"

	"github.com/weftnet/weft/shaping"
	st "github.com/weftnet/weft/shaping/shapingtest"
)

const pods = 100

// BenchmarkADDWithShaping: 100 pods annotated 10M both ways, ADD by ADD
// alternately on a shaping node and on a node without shaping.
func BenchmarkADDWithShaping(b *testing.B) {
	for range b.N {
		shaped := st.NewNodeWith(b, shaping.DefaultConfig(), st.Shaped)
		plain := st.NewNodeWith(b, shaping.DefaultConfig(), st.Unshaped)
		ann := map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"}
		var with, without []time.Duration
		for i := range pods {
			for _, n := range []*st.Node{shaped, plain} {
				p := n.NewPod("p"+string(rune('a'+i/26))+string(rune('a'+i%26)), ann)
				start := time.Now()
				n.MustAdd(p)
				d := time.Since(start)
				if n == shaped {
					with = append(with, d)
				} else {
					without = append(without, d)
				}
			}
		}
		if got := len(shaped.Rec.Applied().Trees[shaping.Egress].Classes); got != pods {
			b.Fatalf("%d classes in the egress tree, want %d", got, pods)
		}
		mw, mo := median(with), median(without)
		b.ReportMetric(ms(mw), "ms/ADD-shaped-p50")
		b.ReportMetric(ms(mo), "ms/ADD-plain-p50")
		b.ReportMetric(ms(with[len(with)-1]), "ms/ADD-shaped-100th")
		b.ReportMetric(float64(mw)/float64(mo), "ratio-p50")
		b.Logf("ADD p50 shaped %v, plain %v (ratio %.2f); 100th pod shaped %v plain %v",
			mw, mo, float64(mw)/float64(mo), with[len(with)-1], without[len(without)-1])
	}
}

// BenchmarkLatencyUnderLoad: p50/p99 of 1-byte RR while the pod's bulk
// flow saturates its 10 Mbit/s egress, Weft's tree vs the reference TBF.
func BenchmarkLatencyUnderLoad(b *testing.B) {
	for range b.N {
		for _, m := range []struct {
			name string
			mode st.Mode
		}{{"weft", st.Shaped}, {"reftbf", st.RefTBF}} {
			cfg := shaping.DefaultConfig()
			cfg.PodCeil = 10_000_000
			n := st.NewNodeWith(b, cfg, m.mode)
			p := n.NewPod("busy", map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"})
			n.MustAdd(p)
			addr := n.EchoServer()
			bulk := make(chan float64, 1)
			go func() { avg, _, _ := n.RunIperf(p, 5201, 8, false); bulk <- avg }()
			time.Sleep(2 * time.Second)
			rtts, err := st.RequestResponse(p.NS, addr, 5*time.Second)
			rate := <-bulk
			if err != nil || len(rtts) == 0 {
				b.Fatalf("%s: RR: %v", m.name, err)
			}
			slices.Sort(rtts)
			p50, p99 := rtts[len(rtts)/2], rtts[len(rtts)*99/100]
			b.ReportMetric(ms(p99), "ms/RR-p99-"+m.name)
			b.ReportMetric(ms(p50), "ms/RR-p50-"+m.name)
			b.ReportMetric(rate, "Mbit/s-bulk-"+m.name)
			b.Logf("%s: bulk %.2f Mbit/s, 1-byte RR p50 %v p99 %v (%d round trips)", m.name, rate, p50, p99, len(rtts))
		}
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
