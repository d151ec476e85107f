package main

import (
	"log/slog"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/udp"
	"github.com/weftnet/weft/vxlan"
)

// nodeKernel is what the backends of one node are built over.
type nodeKernel struct {
	vxlan *vxlan.Netlink
	// routes is the node's one route writer, shared by every backend so a
	// switch hands each destination over by one replace.
	routes *route.Table
	guard  encapguard.Guard // nil: no iptables (uninstall without it)
	// udpMetrics and status are the udp backend's metrics and readiness
	// details (nil in uninstall).
	udpMetrics *udp.Metrics
	status     udp.Reporter
}

// openNodeKernel opens the netlink sockets of the current namespace.
func openNodeKernel(log *slog.Logger) (nodeKernel, func(), error) {
	k, err := vxlan.NewNetlink()
	if err != nil {
		return nodeKernel{}, nil, err
	}
	return nodeKernel{vxlan: k, routes: route.New(route.NewNetlink(k.Handle()), log)}, k.Close, nil
}

// factories is the one list of the backend types weftd knows: the agent
// runs one of them, uninstall asks each to clean up.
func factories(k nodeKernel, log *slog.Logger) []backend.Factory {
	return []backend.Factory{
		vxlan.Factory{Kernel: k.vxlan, Routes: k.routes, Guard: k.guard, Log: log},
		udp.Factory{Kernel: udp.Netlink{Log: log}, Routes: k.routes, Guard: k.guard, Metrics: k.udpMetrics, Status: k.status, Log: log},
	}
}
