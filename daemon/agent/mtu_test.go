package agent

import (
	"testing"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/internal/backend"
)

// Pods get one MTU whatever backend runs (underlay - 50), so a switch
// never leaves a running pod with an MTU its new path cannot carry; a
// configured mtu, or a backend that allows less, wins.
func TestPodMTUSameOnEveryBackend(t *testing.T) {
	for _, c := range []struct {
		name            string
		cfg, pub, under int
		want            int
	}{
		{"vxlan", 0, 1450, 1500, 1450},
		{"udp", 0, 1472, 1500, 1450},
		{"bgp ipip", 0, 1480, 1500, 1450},
		{"bgp never", 0, 1500, 1500, 1450},
		{"vxlan with a small device mtu", 0, 1400, 1500, 1400},
		{"net-conf mtu", 1300, 1472, 1500, 1300},
	} {
		if got := podMTU(&config.NetConf{MTU: c.cfg}, backend.Published{MTU: c.pub}, c.under); got != c.want {
			t.Errorf("%s: pod MTU %d, want %d", c.name, got, c.want)
		}
	}
}
