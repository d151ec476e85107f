package policy

import (
	"context"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/iptables"

	"github.com/weftnet/weft/policy/rules"
)

// counterSaver is an optional Kernel capability: iptables-save with rule
// counters (iptables.Runner has it), so the read-back the Writer does
// anyway also reads the anti-spoofing DROP's packet counter.
type counterSaver interface {
	SaveCounters(ctx context.Context, table string) (string, error)
}

// spoofDrops finds the packet counter of the source check's DROP in a
// dumped WEFT-POL-SPOOF.
func spoofDrops(c *iptables.Chain) (uint64, bool) {
	for i, r := range c.Rules {
		if i < len(c.Packets) && strings.HasSuffix(iptables.Comment(r), " "+rules.SpoofComment) {
			return c.Packets[i], true
		}
	}
	return 0, false
}

// spoofCounter sums the kernel counter over read-backs: when a reading is
// lower than the last one, the rule was rewritten (its counter restarted)
// and the last reading is carried over, so the sum never goes backwards.
// Packets dropped between the last read and a rewrite are not seen.
type spoofCounter struct {
	base, last uint64 // under the Writer's mutex
	total      atomic.Uint64
}

func (s *spoofCounter) observe(v *view) {
	if v == nil || !v.spoofedKnown {
		return
	}
	if v.spoofed < s.last {
		s.base += s.last
	}
	s.last = v.spoofed
	s.total.Store(s.base + v.spoofed)
}

// SpoofedPackets is how many packets with a forged source (or from a veth
// without an endpoint record) the source check has dropped, as of the
// last read-back of the kernel.
func (w *Writer) SpoofedPackets() uint64 { return w.spoofed.total.Load() }

// SpoofedPackets is the Dataplane's count of dropped forged packets (0
// when it does not count them).
func (c *Controller) SpoofedPackets() uint64 {
	if s, ok := c.cfg.Dataplane.(interface{ SpoofedPackets() uint64 }); ok {
		return s.SpoofedPackets()
	}
	return 0
}

// RegisterSpoofedPackets exports weft_policy_spoofed_packets_total, read
// from src at each scrape (the value of the last kernel read-back).
func RegisterSpoofedPackets(reg prometheus.Registerer, src interface{ SpoofedPackets() uint64 }) error {
	return reg.Register(prometheus.NewCounterFunc(prometheus.CounterOpts{
		Name: "weft_policy_spoofed_packets_total",
		Help: "Packets from local pods dropped because their source address is not the pod's own (or the veth has no endpoint record), summed over rule rewrites; updated at each policy read-back.",
	}, func() float64 { return float64(src.SpoofedPackets()) }))
}
