package policy

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// PrometheusMetrics implements Metrics with Prometheus collectors.
type PrometheusMetrics struct {
	syncSeconds  *prometheus.HistogramVec
	syncErrors   prometheus.Counter
	renderErrors prometheus.Gauge
	programmed   prometheus.Histogram
	ctDeleted    prometheus.Counter
}

// NewPrometheusMetrics creates the policy metrics and registers them.
func NewPrometheusMetrics(reg prometheus.Registerer) (*PrometheusMetrics, error) {
	m := &PrometheusMetrics{
		syncSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "weft_policy_sync_seconds",
			Help: "Time of one policy sync, by phase (render, apply).", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)},
			[]string{"phase"}),
		syncErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_policy_sync_errors_total",
			Help: "Policy syncs that failed (reading the informers' state or applying it to the kernel)."}),
		renderErrors: prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_policy_unenforceable",
			Help: "NetworkPolicies selecting pods on this node that cannot be rendered (their pods fail closed)."}),
		programmed: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "weft_policy_pod_programmed_seconds",
			Help: "Time from a pod's creation to its policy rules being in the kernel.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 12)}),
		ctDeleted: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_policy_conntrack_deleted_total",
			Help: "Conntrack entries deleted because a policy change denies their flow."}),
	}
	for _, c := range []prometheus.Collector{m.syncSeconds, m.syncErrors, m.renderErrors, m.programmed, m.ctDeleted} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// SyncDone implements Metrics.
func (m *PrometheusMetrics) SyncDone(render, apply time.Duration, err error) {
	m.syncSeconds.WithLabelValues("render").Observe(render.Seconds())
	m.syncSeconds.WithLabelValues("apply").Observe(apply.Seconds())
	if err != nil {
		m.syncErrors.Inc()
	}
}

// RenderErrors implements Metrics.
func (m *PrometheusMetrics) RenderErrors(n int) { m.renderErrors.Set(float64(n)) }

// EndpointProgrammed implements Metrics.
func (m *PrometheusMetrics) EndpointProgrammed(_, _ string, d time.Duration) {
	m.programmed.Observe(d.Seconds())
}

// ConntrackFlowsDeleted implements ConntrackMetrics.
func (m *PrometheusMetrics) ConntrackFlowsDeleted(n int) { m.ctDeleted.Add(float64(n)) }
