package api

import (
	"encoding/json"
	"net/http"
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/endpoint"
)

// CNIMetrics are the plugin's requests as it reports them over the local
// socket (endpoint.Report, after each ADD and DEL): latency by verb and
// errors by verb and CNI code. The plugin measures, because only it sees
// the whole request (IPAM, veth, the policy wait); weftd counts.
type CNIMetrics struct {
	latency *prometheus.HistogramVec
	errors  *prometheus.CounterVec
}

// NewCNIMetrics creates and registers the metrics.
func NewCNIMetrics(reg prometheus.Registerer) (*CNIMetrics, error) {
	m := &CNIMetrics{
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "weft_cni_request_duration_seconds",
			Help:    "Duration of the weft plugin's CNI requests, by verb (ADD, DEL), successful or not.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 13)}, []string{"op"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "weft_cni_errors_total",
			Help: "Failed CNI requests of the weft plugin, by verb and CNI error code."}, []string{"op", "code"}),
	}
	for _, c := range []prometheus.Collector{m.latency, m.errors} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	for _, op := range []string{"ADD", "DEL"} {
		m.latency.WithLabelValues(op) // present from the start, at zero
	}
	return m, nil
}

// knownCode bounds the code label to the spec's codes (else "other").
func knownCode(c uint) string {
	switch {
	case c <= 11, c == 50, c == 51, c == 999:
		return strconv.Itoa(int(c))
	}
	return "other"
}

// Register puts the report route on the local socket's table.
func (m *CNIMetrics) Register(r *Routes) error {
	return r.Handle(endpoint.ReportPath, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var rep endpoint.CNIReport
		if req.Method != http.MethodPost || json.NewDecoder(http.MaxBytesReader(w, req.Body, 4096)).Decode(&rep) != nil ||
			rep.Op != "ADD" && rep.Op != "DEL" || rep.Seconds < 0 || rep.Seconds > 3600 {
			http.Error(w, "POST a CNIReport", http.StatusBadRequest)
			return
		}
		m.latency.WithLabelValues(rep.Op).Observe(rep.Seconds)
		if rep.Code != 0 {
			m.errors.WithLabelValues(rep.Op, knownCode(rep.Code)).Inc()
		}
		w.WriteHeader(http.StatusNoContent)
	}))
}
