package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"syscall"

	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/daemon/masq"
	"github.com/weftnet/weft/daemon/subnet"
	"github.com/weftnet/weft/internal/backend"
)

// UninstallDeps are what Uninstall removes things from.
type UninstallDeps struct {
	Deps
	// Backends are the factories of every backend type weftd knows; each
	// cleans up what its backends could have left.
	Backends []backend.Factory
	// Routes removes every route Weft owns (its route protocol) that a
	// backend's cleanup left, e.g. ones out of the underlay; nil skips.
	Routes interface {
		Purge(ctx context.Context) (int, error)
	}
	// Leftovers removes the links, chains and sets weft owns by name; nil
	// skips them.
	Leftovers Leftovers
	// IPAMDataDir is weft-ipam's store of the network (by default
	// /var/lib/cni/networks/weft; the conflist's ipam.dataDir, when it names
	// one, adds <dataDir>/<name>); "" leaves IPAM state alone.
	IPAMDataDir string
	// MasqLock is the plugin's ipMasq lock file (podnet.MasqLock); ""
	// leaves it.
	MasqLock string
}

// Leftovers removes the node's kernel objects that weft owns by name.
type Leftovers interface {
	// DeleteLinks deletes every host veth (wv*), the bridge and weft's
	// own devices (weft.*).
	DeleteLinks(bridge string) error
	// SweepTables removes every WEFT-* chain and every rule that jumps to
	// one or matches a weft-* ipset, in every table of both iptables
	// backends and both families, then every weft-* ipset.
	SweepTables(ctx context.Context) error
}

// Uninstall removes weft from the node: the conflist first (so no new pod
// gets a weft address), then the pods' veths, the bridge, whatever each
// backend type could have left (its devices, entries, routes and guard
// chains), every WEFT-* chain and weft-* set (masquerade, policy, and
// whatever a backend added), the subnet file, the endpoint
// records, the local socket, the IPAM state, the plugin's ipMasq lock file and weft's own plugin binaries
// (the reference plugins stay: the node's runtime may own them), and
// finally the subnet lease and the node's weft.dev/* annotations. Paths
// come from opt and from the conflist weft wrote, which is read before it
// goes. It continues past errors and returns them all.
func Uninstall(ctx context.Context, opt Options, d UninstallDeps) error {
	if opt.CNIConfDir == "" {
		opt.CNIConfDir = install.DefaultConfDir
	}
	conf := readWeftConflist(opt.CNIConfDir)
	errs := []error{install.RemoveConflist(opt.CNIConfDir)}
	if d.Leftovers != nil {
		errs = append(errs, d.Leftovers.DeleteLinks(conf.bridge()))
	}
	for _, f := range d.Backends {
		if err := f.Cleanup(ctx); err != nil {
			errs = append(errs, fmt.Errorf("clean up backend %s: %w", f.Type(), err))
		}
	}
	if d.Routes != nil {
		if _, err := d.Routes.Purge(ctx); err != nil {
			errs = append(errs, fmt.Errorf("remove weft's routes: %w", err))
		}
	}
	if d.Tables != nil {
		errs = append(errs, masq.New(d.Tables, netip.Prefix{}).Remove(ctx))
	}
	if d.Leftovers != nil {
		errs = append(errs, d.Leftovers.SweepTables(ctx))
	}
	errs = append(errs, removeFiles(opt, conf, d.IPAMDataDir, d.MasqLock)...)
	if d.Client != nil && opt.NodeName != "" {
		errs = append(errs, subnet.New(d.Client, opt.NodeName, d.Log).Release(ctx))
	}
	return errors.Join(errs...)
}

// weftConflist is what uninstall needs from the conflist weft wrote.
type weftConflist struct {
	Name    string `json:"name"`
	Plugins []struct {
		Type         string `json:"type"`
		Bridge       string `json:"bridge"`
		EndpointDir  string `json:"endpointDir"`
		PolicySocket string `json:"policySocket"`
		IPAM         struct {
			SubnetFile string `json:"subnetFile"`
			DataDir    string `json:"dataDir"`
		} `json:"ipam"`
	} `json:"plugins"`
}

// readWeftConflist reads dir's weft conflist; missing or unreadable gives
// the zero value (then only opt's paths are used).
func readWeftConflist(dir string) weftConflist {
	var c weftConflist
	if b, err := os.ReadFile(filepath.Join(dir, install.ConflistName)); err == nil {
		_ = json.Unmarshal(b, &c)
	}
	return c
}

func (c weftConflist) bridge() string {
	for _, p := range c.Plugins {
		if p.Type == "weft" && p.Bridge != "" {
			return p.Bridge
		}
	}
	return install.DefaultBridge
}

// removeFiles deletes the files and directories weft wrote on the node.
func removeFiles(opt Options, c weftConflist, ipamDir, masqLock string) []error {
	name := c.Name
	if name == "" {
		name = install.NetworkName
	}
	paths := []string{opt.SubnetFile, opt.EndpointDir, opt.PolicySocket}
	for _, p := range c.Plugins {
		if p.Type != "weft" {
			continue
		}
		paths = append(paths, p.IPAM.SubnetFile, p.EndpointDir, p.PolicySocket)
		if p.IPAM.DataDir != "" {
			paths = append(paths, filepath.Join(p.IPAM.DataDir, name))
		}
	}
	paths = append(paths, ipamDir, masqLock)
	if opt.CNIBinDir != "" {
		for _, b := range install.Own() {
			paths = append(paths, filepath.Join(opt.CNIBinDir, b))
		}
	}
	var errs []error
	for _, p := range paths {
		if p == "" {
			continue
		}
		if err := os.RemoveAll(p); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
		// weft's own run directory (/run/weft) goes once empty.
		if parent := filepath.Dir(p); filepath.Base(parent) == "weft" {
			if err := os.Remove(parent); err != nil && !errors.Is(err, fs.ErrNotExist) && !isNotEmpty(err) {
				errs = append(errs, fmt.Errorf("remove %s: %w", parent, err))
			}
		}
	}
	return errs
}

func isNotEmpty(err error) bool {
	return errors.Is(err, syscall.ENOTEMPTY) || errors.Is(err, syscall.EEXIST)
}
