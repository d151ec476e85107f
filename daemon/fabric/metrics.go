package fabric

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/backend"
)

var (
	infoDesc = prometheus.NewDesc("weft_backend_info",
		"The encapsulation identities this node decapsulates (1 each); sending=\"true\" on the one it sends with to every peer.",
		[]string{"identity", "type", "sending"}, nil)
	phaseDesc = prometheus.NewDesc("weft_backend_migration_phase",
		"The backend migration phase: 0 none, 1 receive (the new backend receives beside the old), 2 send (every peer is sent the new encapsulation), 3 drain (every peer sends it too; the old goes after the drain period).",
		nil, nil)
)

// PhaseValue is the weft_backend_migration_phase value of a phase.
func PhaseValue(phase string) float64 {
	switch phase {
	case PhaseReceive:
		return 1
	case PhaseSend:
		return 2
	case PhaseDrain:
		return 3
	}
	return 0
}

// Describe implements prometheus.Collector.
func (m *Manager) Describe(ch chan<- *prometheus.Desc) {
	ch <- infoDesc
	ch <- phaseDesc
}

// Collect implements prometheus.Collector.
func (m *Manager) Collect(ch chan<- prometheus.Metric) {
	st := m.Snapshot()
	for _, id := range st.Decapsulates {
		sending := "false"
		if id == st.Sending {
			sending = "true"
		}
		ch <- prometheus.MustNewConstMetric(infoDesc, prometheus.GaugeValue, 1, id, typeOf(id), sending)
	}
	ch <- prometheus.MustNewConstMetric(phaseDesc, prometheus.GaugeValue, PhaseValue(st.Phase))
}

func typeOf(id string) string { return backend.IdentityType(id) }
