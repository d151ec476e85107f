package encapguard

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

var dropsDesc = prometheus.NewDesc("weft_encap_dropped_packets_total",
	"Encapsulated packets the encapsulation guard dropped, by encapsulation and reason (from-pod, unknown-sender, forged-inner-source, foreign-inner-destination).",
	[]string{"encap", "reason"}, nil)

// Collector exports a guard's drop counters, read from the kernel at
// scrape time.
type Collector struct {
	g     Guard
	kinds []string
	log   *slog.Logger
}

// NewCollector returns a collector for the given encapsulation kinds.
func NewCollector(g Guard, log *slog.Logger, kinds ...string) *Collector {
	return &Collector{g: g, kinds: kinds, log: log}
}

// Describe implements prometheus.Collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) { ch <- dropsDesc }

// Collect implements prometheus.Collector.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, k := range c.kinds {
		d, err := c.g.Drops(ctx, k)
		if err != nil {
			c.log.Warn("read encapsulation guard counters", "encap", k, "err", err)
			continue
		}
		for _, r := range Reasons() {
			ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(d[r]), k, r)
		}
	}
}
