package main

import (
	"log/slog"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/vxlan"
)

// nodeKernel is what the backends of one node are built over.
type nodeKernel struct {
	vxlan *vxlan.Netlink
	guard encapguard.Guard // nil: no iptables (uninstall without it)
}

// factories is the one list of the backend types weftd knows: the agent
// runs one of them, uninstall asks each to clean up.
func factories(k nodeKernel, log *slog.Logger) []backend.Factory {
	return []backend.Factory{
		vxlan.Factory{Kernel: k.vxlan, Guard: k.guard, Log: log},
	}
}
