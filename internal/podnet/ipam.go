package podnet

import (
	"context"
	"fmt"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// IPAM is an address manager the plugin delegates to. args.StdinData is
// the whole network config, as an IPAM plugin would receive it.
type IPAM interface {
	Add(ctx context.Context, args *skel.CmdArgs) (*current.Result, error)
	Del(ctx context.Context, args *skel.CmdArgs) error
	Check(ctx context.Context, args *skel.CmdArgs) error
	GC(ctx context.Context, args *skel.CmdArgs) error
	Status(ctx context.Context, args *skel.CmdArgs) error
}

// ExecIPAM runs the IPAM plugin called Type from CNI_PATH, the standard
// delegation (one process start per call).
type ExecIPAM struct {
	Type string
}

// Add delegates ADD and converts the result to the current spec version.
func (e ExecIPAM) Add(ctx context.Context, args *skel.CmdArgs) (*current.Result, error) {
	r, err := invoke.DelegateAdd(ctx, e.Type, args.StdinData, nil)
	if err != nil {
		return nil, err
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("convert result of IPAM plugin %s: %w", e.Type, err)
	}
	return res, nil
}

// Del delegates DEL.
func (e ExecIPAM) Del(ctx context.Context, args *skel.CmdArgs) error {
	return invoke.DelegateDel(ctx, e.Type, args.StdinData, nil)
}

// Check delegates CHECK.
func (e ExecIPAM) Check(ctx context.Context, args *skel.CmdArgs) error {
	return invoke.DelegateCheck(ctx, e.Type, args.StdinData, nil)
}

// GC delegates GC.
func (e ExecIPAM) GC(ctx context.Context, args *skel.CmdArgs) error {
	return invoke.DelegateGC(ctx, e.Type, args.StdinData, nil)
}

// Status delegates STATUS.
func (e ExecIPAM) Status(ctx context.Context, args *skel.CmdArgs) error {
	return invoke.DelegateStatus(ctx, e.Type, args.StdinData, nil)
}

// FuncIPAM adapts in-process IPAM entry points (the weft-ipam package's
// CmdAdd, CmdDel, ...) to IPAM, saving a process start per call.
type FuncIPAM struct {
	AddFn    func(*skel.CmdArgs) (*current.Result, error)
	DelFn    func(*skel.CmdArgs) error
	CheckFn  func(*skel.CmdArgs) error
	GCFn     func(*skel.CmdArgs) error
	StatusFn func(*skel.CmdArgs) error
}

// Add runs the in-process ADD.
func (f FuncIPAM) Add(_ context.Context, args *skel.CmdArgs) (*current.Result, error) {
	return f.AddFn(args)
}

// Del runs the in-process DEL.
func (f FuncIPAM) Del(_ context.Context, args *skel.CmdArgs) error { return f.DelFn(args) }

// Check runs the in-process CHECK.
func (f FuncIPAM) Check(_ context.Context, args *skel.CmdArgs) error { return f.CheckFn(args) }

// GC runs the in-process GC.
func (f FuncIPAM) GC(_ context.Context, args *skel.CmdArgs) error { return f.GCFn(args) }

// Status runs the in-process STATUS.
func (f FuncIPAM) Status(_ context.Context, args *skel.CmdArgs) error { return f.StatusFn(args) }
