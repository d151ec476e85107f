package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"

	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/daemon/masq"
	"github.com/weftnet/weft/daemon/subnet"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/vxlan"
)

// UninstallDeps are what Uninstall removes things from.
type UninstallDeps struct {
	Deps
	Kernel vxlan.Kernel
	Guard  encapguard.Guard
}

// Uninstall removes weft from the node: the conflist first (so no new pod
// gets a weft address), then the VXLAN device with all its entries, the
// masquerade chains, the subnet file, and finally the subnet lease and the
// node's weft.dev/* annotations. It continues past errors and returns them
// all.
func Uninstall(ctx context.Context, opt Options, d UninstallDeps) error {
	var errs []error
	if opt.CNIConfDir == "" {
		opt.CNIConfDir = install.DefaultConfDir
	}
	errs = append(errs, install.RemoveConflist(opt.CNIConfDir))
	if d.Kernel != nil {
		errs = append(errs, d.Kernel.DeleteDevice(vxlan.DefaultDevice))
	}
	if d.Guard != nil {
		errs = append(errs, d.Guard.Remove(ctx, vxlan.Type))
	}
	if d.Tables != nil {
		errs = append(errs, masq.New(d.Tables, netip.Prefix{}).Remove(ctx))
	}
	if opt.SubnetFile != "" {
		if err := os.Remove(opt.SubnetFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove subnet file: %w", err))
		}
	}
	if d.Client != nil && opt.NodeName != "" {
		errs = append(errs, subnet.New(d.Client, opt.NodeName, d.Log).Release(ctx))
	}
	return errors.Join(errs...)
}
