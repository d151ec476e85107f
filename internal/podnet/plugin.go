package podnet

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
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
		Add:    func(a *skel.CmdArgs) error { return p.reported(ctx, "ADD", a, p.Add) },
		Del:    func(a *skel.CmdArgs) error { return p.reported(ctx, "DEL", a, p.Del) },
		Check:  func(a *skel.CmdArgs) error { return p.Check(ctx, a) },
		GC:     func(a *skel.CmdArgs) error { return p.GC(ctx, a) },
		Status: func(a *skel.CmdArgs) error { return p.Status(ctx, a) },
	}
}

// reported runs a verb and, when the config names weftd's socket, tells
// weftd how long it took and its error code (weftd's weft_cni_* metrics);
// the report is bounded to 200 ms and its failure ignored.
func (p *Plugin) reported(ctx context.Context, op string, a *skel.CmdArgs, verb func(context.Context, *skel.CmdArgs) error) error {
	t0 := time.Now()
	err := verb(ctx, a)
	conf, cerr := LoadConf(a.StdinData)
	if cerr != nil || conf.PolicySocket == "" {
		return err
	}
	r := endpoint.CNIReport{Op: op, Seconds: time.Since(t0).Seconds()}
	if err != nil {
		r.Code = types.ErrInternal
		if te, ok := err.(*types.Error); ok {
			r.Code = te.Code
		}
	}
	if rerr := endpoint.Report(ctx, conf.PolicySocket, r, 200*time.Millisecond); rerr != nil {
		p.log.Debug("CNI metrics not reported", "err", rerr)
	}
	return err
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
