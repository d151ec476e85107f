package udp

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/uencap"
)

var (
	packetsDesc = prometheus.NewDesc("weft_udp_packets_total",
		"Packets the udp relay moved: tx read from weft.udp and sent to peers, rx received from peers and written to weft.udp.",
		[]string{"direction"}, nil)
	bytesDesc = prometheus.NewDesc("weft_udp_bytes_total",
		"Bytes of inner IP packets the udp relay moved, by direction.", []string{"direction"}, nil)
	dropsDesc = prometheus.NewDesc("weft_udp_dropped_packets_total",
		"Packets the udp relay dropped, by reason.", []string{"reason"}, nil)
	batchDesc = prometheus.NewDesc("weft_udp_batch_packets",
		"Packets per batch: per TUN read (tx) and per socket receive (rx).", []string{"direction"}, nil)
	errorsDesc = prometheus.NewDesc("weft_udp_relay_errors_total",
		"Failed TUN reads and socket receives the udp relay went on after.", nil, nil)
	modeDesc = prometheus.NewDesc("weft_udp_offload_mode",
		"1 for the offload mode the udp relay runs with: the TUN's offloads and the socket's.", []string{"tun", "socket"}, nil)
)

// Metrics exports the udp relay's counters to Prometheus. One per weftd:
// the backend attaches each relay it runs, and the totals of the relays
// it stopped are kept, so the counters only go up across re-opens.
type Metrics struct {
	mu   sync.Mutex
	base Stats
	cur  *Relay
}

var _ prometheus.Collector = (*Metrics)(nil)

// NewMetrics returns a collector with no relay.
func NewMetrics() *Metrics {
	return &Metrics{base: Stats{Totals: uencap.Totals{Drops: map[string]uint64{}}}}
}

func (m *Metrics) attach(r *Relay) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cur = r
}

// detach keeps r's final counts.
func (m *Metrics) detach(r *Relay) {
	if m == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur != r {
		return
	}
	m.base = m.add(r.Stats())
	m.base.TUNMode, m.base.SocketMode = "", ""
	m.cur = nil
}

// add returns base plus s (with s's modes).
func (m *Metrics) add(s Stats) Stats {
	return Stats{Totals: m.base.Totals.Add(s.Totals), TUNMode: s.TUNMode, SocketMode: s.SocketMode, UDPGSOOff: s.UDPGSOOff}
}

// Snapshot returns the totals so far.
func (m *Metrics) Snapshot() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cur == nil {
		return m.add(Stats{})
	}
	return m.add(m.cur.Stats())
}

// Describe implements prometheus.Collector.
func (m *Metrics) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{packetsDesc, bytesDesc, dropsDesc, batchDesc, errorsDesc, modeDesc} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (m *Metrics) Collect(ch chan<- prometheus.Metric) {
	s := m.Snapshot()
	for _, d := range []struct {
		name string
		f    Flow
	}{{"tx", s.Tx}, {"rx", s.Rx}} {
		ch <- prometheus.MustNewConstMetric(packetsDesc, prometheus.CounterValue, float64(d.f.Packets), d.name)
		ch <- prometheus.MustNewConstMetric(bytesDesc, prometheus.CounterValue, float64(d.f.Bytes), d.name)
		ch <- prometheus.MustNewConstHistogram(batchDesc, d.f.Batches, float64(d.f.Packets), batchBuckets(d.f), d.name)
	}
	for _, r := range Reasons() {
		ch <- prometheus.MustNewConstMetric(dropsDesc, prometheus.CounterValue, float64(s.Drops[r.String()]), r.String())
	}
	ch <- prometheus.MustNewConstMetric(errorsDesc, prometheus.CounterValue, float64(s.Errors))
	if s.TUNMode != "" {
		sock := s.SocketMode
		if s.UDPGSOOff {
			sock += " (gso refused)"
		}
		ch <- prometheus.MustNewConstMetric(modeDesc, prometheus.GaugeValue, 1, s.TUNMode, sock)
	}
}

// batchBuckets turns the relay's power-of-two size buckets into the
// cumulative counts of a histogram: bucket i (2^i .. 2^(i+1)-1 packets)
// has the upper bound 2^(i+1)-1; the last one is +Inf.
func batchBuckets(f Flow) map[float64]uint64 {
	out := map[float64]uint64{}
	var cum uint64
	for i := 0; i < NumBuckets-1; i++ {
		cum += f.BatchSizes[i]
		out[float64(uint64(1)<<(i+1)-1)] = cum
	}
	return out
}
