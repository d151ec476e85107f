package podnet

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// Plugin implements the CNI verbs of the weft plugin.
type Plugin struct {
	inproc map[string]IPAM
	log    *slog.Logger
}

// New returns the plugin. inproc maps IPAM plugin types that run inside
// this process (e.g. "weft-ipam") to their implementation; any other type
// is exec'd from CNI_PATH. log may be nil.
func New(inproc map[string]IPAM, log *slog.Logger) *Plugin {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Plugin{inproc: inproc, log: log}
}

// ipamFor picks the IPAM implementation for the config.
func (p *Plugin) ipamFor(conf *NetConf) IPAM {
	if i, ok := p.inproc[conf.IPAM.Type]; ok {
		return i
	}
	return ExecIPAM{Type: conf.IPAM.Type}
}

// Funcs returns the verbs for skel.PluginMainFuncs.
func (p *Plugin) Funcs(ctx context.Context) skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    func(a *skel.CmdArgs) error { return p.Add(ctx, a) },
		Del:    func(a *skel.CmdArgs) error { return p.Del(ctx, a) },
		Check:  func(a *skel.CmdArgs) error { return p.Check(ctx, a) },
		GC:     func(a *skel.CmdArgs) error { return p.GC(ctx, a) },
		Status: func(a *skel.CmdArgs) error { return p.Status(ctx, a) },
	}
}

// cniErr wraps err as a CNI error with code unless it already is one.
func cniErr(code uint, err error, format string, a ...any) error {
	if err == nil {
		return nil
	}
	if te, ok := err.(*types.Error); ok {
		return te
	}
	return types.NewError(code, fmt.Sprintf(format, a...)+": "+err.Error(), "")
}
