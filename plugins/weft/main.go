// Command weft is the CNI plugin that wires pods into the node bridge.
// The logic lives in internal/podnet; weft-ipam runs in-process.
package main

import (
	"context"
	"log/slog"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/ipam"
)

func main() {
	inproc := map[string]podnet.IPAM{
		"weft-ipam": podnet.FuncIPAM{
			AddFn: ipam.CmdAdd, DelFn: ipam.CmdDel, CheckFn: ipam.CmdCheck,
			GCFn: ipam.CmdGC, StatusFn: ipam.CmdStatus,
		},
	}
	// Warnings (failed undo steps) go to stderr, which the runtime logs.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	p := podnet.New(inproc, log)
	skel.PluginMainFuncs(p.Funcs(context.Background()),
		version.PluginSupports("0.3.1", "0.4.0", "1.0.0", "1.1.0"),
		"weft: pods on the node bridge (CNI 0.3.1, 0.4.0, 1.0.0, 1.1.0)")
}
