package main

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/bgp"
	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/internal/subnetfile"
	"github.com/weftnet/weft/ipip"
	"github.com/weftnet/weft/udp"
	"github.com/weftnet/weft/vxlan"
)

var (
	descLeaseHeld = prometheus.NewDesc("weft_subnet_lease_held",
		"1 when the node holds its pod subnet (Node.spec.podCIDR or its weft subnet Lease), 0 while it has none or lost it.", nil, nil)
	descSubnet = prometheus.NewDesc("weft_subnet_info",
		"1, labelled with the node's pod subnet and the cluster network as written to the subnet file.", []string{"subnet", "network"}, nil)
	descEncapPackets = prometheus.NewDesc("weft_encap_packets_total",
		"Packets through a backend's encapsulation device (kernel counters), by backend and direction (tx: encapsulated and sent, rx: received and decapsulated).",
		[]string{"backend", "device", "direction"}, nil)
	descEncapBytes = prometheus.NewDesc("weft_encap_bytes_total",
		"Bytes through a backend's encapsulation device (kernel counters), by backend and direction.", []string{"backend", "device", "direction"}, nil)
)

// nodeCollector reports, at scrape time, the subnet lease state and the
// kernel counters of every encapsulation device present.
type nodeCollector struct {
	status     *api.Status
	subnetFile string
	// stats reads a device's kernel counters (netlink in weftd).
	stats func(dev string) (linkStats, bool)
}

// linkStats are a device's kernel counters.
type linkStats struct{ rxPackets, txPackets, rxBytes, txBytes uint64 }

// netlinkStats reads a device's counters in weftd's network namespace.
func netlinkStats(dev string) (linkStats, bool) {
	l, err := netlink.LinkByName(dev)
	if err != nil || l.Attrs().Statistics == nil {
		return linkStats{}, false
	}
	s := l.Attrs().Statistics
	return linkStats{rxPackets: s.RxPackets, txPackets: s.TxPackets, rxBytes: s.RxBytes, txBytes: s.TxBytes}, true
}

// encapDevices maps each encapsulation device to its backend.
var encapDevices = [][2]string{{vxlan.DefaultDevice, vxlan.Type}, {udp.DefaultDevice, udp.Type}, {ipip.DefaultDevice, bgp.Type}}

func (c nodeCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descLeaseHeld, descSubnet, descEncapPackets, descEncapBytes} {
		ch <- d
	}
}

func (c nodeCollector) Collect(ch chan<- prometheus.Metric) {
	held := 0.0
	if c.status.Met(api.CondLease) {
		held = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeaseHeld, prometheus.GaugeValue, held)
	if f, err := subnetfile.Read(c.subnetFile); err == nil {
		ch <- prometheus.MustNewConstMetric(descSubnet, prometheus.GaugeValue, 1, f.Subnet.String(), f.Network.String())
	}
	for _, d := range encapDevices {
		st, ok := c.stats(d[0])
		if !ok {
			continue
		}
		for _, v := range []struct {
			desc   *prometheus.Desc
			dir    string
			amount uint64
		}{{descEncapPackets, "rx", st.rxPackets}, {descEncapPackets, "tx", st.txPackets}, {descEncapBytes, "rx", st.rxBytes}, {descEncapBytes, "tx", st.txBytes}} {
			ch <- prometheus.MustNewConstMetric(v.desc, prometheus.CounterValue, float64(v.amount), d[1], d[0], v.dir)
		}
	}
}
