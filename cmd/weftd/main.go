// Command weftd is weft's per-node agent.
//
//	weftd [flags]              run the agent (the DaemonSet's main container)
//	weftd install-cni [flags]  copy the CNI plugins into /opt/cni/bin (init container)
//	weftd uninstall [flags]    remove weft from this node
//	weftd version              print the version and how it was built
//
// On SIGTERM weftd exits and leaves everything in place (conflist, subnet
// file, VXLAN device and entries, masquerade rules), so pods keep their
// traffic and new pods are still created across a restart or upgrade; the
// next weftd adopts it all. With --remove-cni-config-on-exit it removes the
// conflist on exit (the node then reports NetworkNotReady until weftd is
// back). `weftd uninstall` removes everything.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/bgp"
	"github.com/weftnet/weft/daemon/agent"
	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/daemon/fabric"
	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/subnetfile"
	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/udp"
	"github.com/weftnet/weft/vxlan"
)

func main() {
	args := os.Args[1:]
	cmd := "run"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch cmd {
	case "run":
		err = run(ctx, args, log)
	case "install-cni":
		err = installCNI(args, log)
	case "uninstall":
		err = uninstall(ctx, args, log)
	case "version":
		err = printVersion(os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q (run, install-cni, uninstall, version)", cmd)
	}
	if err != nil {
		log.Error("weftd "+cmd+" failed", "err", err)
		os.Exit(1)
	}
}

type common struct {
	node, kubeconfig, confDir, subnetFile, publicIP string
}

func (c *common) register(fs *flag.FlagSet) {
	fs.StringVar(&c.node, "node-name", os.Getenv("NODE_NAME"), "this node's name (env NODE_NAME)")
	fs.StringVar(&c.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig path; empty = in-cluster service account")
	fs.StringVar(&c.confDir, "cni-conf-dir", install.DefaultConfDir, "where the CNI conflist is written")
	fs.StringVar(&c.subnetFile, "subnet-file", subnetfile.DefaultPath, "node subnet file read by weft-ipam")
	fs.StringVar(&c.publicIP, "public-ip", "", "underlay address peers send to (default: the node's InternalIP)")
}

func (c *common) options() (agent.Options, error) {
	o := agent.Options{NodeName: c.node, CNIConfDir: c.confDir, SubnetFile: c.subnetFile}
	if c.node == "" {
		return o, fmt.Errorf("--node-name (or NODE_NAME) is required")
	}
	if c.publicIP != "" {
		ip, err := netip.ParseAddr(c.publicIP)
		if err != nil || !ip.Is4() {
			return o, fmt.Errorf("--public-ip %q: not an IPv4 address", c.publicIP)
		}
		o.PublicIP = ip
	}
	return o, nil
}

func (c *common) client() (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if c.kubeconfig != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", c.kubeconfig)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client config: %w", err)
	}
	cfg.UserAgent = "weftd"
	return kubernetes.NewForConfig(cfg)
}

func run(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("weftd", flag.ContinueOnError)
	var c common
	c.register(fs)
	healthAddr := fs.String("health-addr", api.DefaultAddr, "address for /healthz and /readyz (open, for probes)")
	var opsf opsFlags
	opsf.register(fs)
	binDir := fs.String("cni-bin-dir", install.DefaultBinDir, "where the chained plugins must be before the conflist is written")
	removeOnExit := fs.Bool("remove-cni-config-on-exit", false, "remove the conflist when weftd exits, so no pod is created while it is away (default: leave it, pods keep being created across a restart)")
	resync := fs.Duration("resync", 10*time.Second, "period of the full resync that repairs kernel drift")
	pol := policyFlags{}
	pol.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	opt, err := c.options()
	if err != nil {
		return err
	}
	opt.ResyncInterval = *resync
	opt.CNIBinDir = *binDir
	if pol.enabled {
		opt.EndpointDir, opt.PolicySocket = pol.endpointDir, pol.socket
	}
	client, err := c.client()
	if err != nil {
		return err
	}
	mode, err := iptables.Detect(ctx, "")
	if err != nil {
		return fmt.Errorf("iptables: %w", err)
	}
	log.Info("iptables backend", "mode", mode)
	nk, closeKernel, err := openNodeKernel(log)
	if err != nil {
		return err
	}
	defer closeKernel()
	status, metrics := api.NewStatus(), api.NewMetrics()
	nk.guard = encapguard.NewIPTables(iptables.Runner{Mode: mode})
	metrics.Registry.MustRegister(encapguard.NewCollector(nk.guard, log, vxlan.Type, udp.Type, encapguard.IPIP().Kind))
	nk.udpMetrics, nk.status = udp.NewMetrics(), status
	metrics.Registry.MustRegister(nk.udpMetrics)
	nk.bgp.Speaker, nk.bgp.Secrets, nk.bgp.Report = bgp.NewGoBGP(log), secretKeys{client}, status
	metrics.Registry.MustRegister(nk.bgp, nodeCollector{status: status, subnetFile: opt.SubnetFile, stats: netlinkStats})
	mgr := fabric.NewManager(factories(nk, log.With("node", opt.NodeName)), log)
	mgr.SetRoutes(nk.routes)
	metrics.Registry.MustRegister(mgr)
	shp := newShaper(opt.EndpointDir, *resync, log.With("node", opt.NodeName))
	a := agent.New(opt, agent.Deps{Client: client, Backends: mgr, Tables: iptables.Runner{Mode: mode}, Host: agent.NetlinkHost{},
		Status: status, Metrics: metrics, Log: log, Shaper: shp.svc})
	// A server that fails stops weftd at once (not when the agent returns):
	// kubelet restarts it and the failure is visible, instead of a weftd
	// that looks healthy while no pod can start.
	runCtx, fatal := context.WithCancelCause(ctx)
	defer fatal(nil)
	var openReg *prometheus.Registry
	if opsf.openMetrics {
		openReg = metrics.Registry
	}
	go func() {
		if err := api.Serve(runCtx, *healthAddr, api.Handler(status, openReg, 3**resync+time.Minute), log); err != nil {
			fatal(fmt.Errorf("health server: %w", err))
		}
	}()
	opsSrv := newOpsServer(opt.NodeName, status, pol, nk, log)
	if pol.enabled {
		status.Set(policy.CondSync, "not yet synced")
		stopPolicy, err := pol.start(runCtx, policyDeps{client: client, node: opt.NodeName, reg: metrics.Registry,
			health: status, fatal: fatal, log: log, ops: opsSrv, extra: shp.svc.Rec.Handler(shp.loop.MarkDirty)})
		if err != nil {
			return err
		}
		defer stopPolicy()
		go func() {
			if err := shp.run(runCtx, client, opt.NodeName, log); err != nil && runCtx.Err() == nil {
				fatal(fmt.Errorf("bandwidth shaping: %w", err))
			}
		}()
	}
	if err := opsSrv.serve(runCtx, opsf, client, metrics, fatal); err != nil {
		return err
	}
	runErr := a.Run(runCtx)
	if runCtx.Err() != nil && ctx.Err() == nil {
		runErr = context.Cause(runCtx) // a server failed
	}
	fatal(nil) // the policy engine stops too, whatever ended the agent
	leave(mgr, opt.CNIConfDir, *removeOnExit, log)
	return runErr
}

// leave stops the backend but leaves the data plane in place for the next
// weftd to adopt; with removeConflist the conflist goes.
func leave(mgr *fabric.Manager, confDir string, removeConflist bool, log *slog.Logger) {
	if err := mgr.Stop(context.Background(), false); err != nil {
		log.Warn("stop backend", "err", err)
	}
	if removeConflist {
		if err := install.RemoveConflist(confDir); err != nil {
			log.Warn("remove conflist on exit", "err", err)
		} else {
			log.Info("removed CNI conflist on exit", "dir", confDir)
		}
	}
}

func installCNI(args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("install-cni", flag.ContinueOnError)
	self, _ := os.Executable()
	src := fs.String("src-dir", filepath.Dir(self), "directory holding the plugin binaries (default: weftd's own)")
	dst := fs.String("cni-bin-dir", install.DefaultBinDir, "where runtimes look for CNI plugins")
	plugins := fs.String("plugins", strings.Join(install.Binaries(), ","), "plugins to copy")
	if err := fs.Parse(args); err != nil {
		return err
	}
	wrote, err := install.CopyBinaries(*src, *dst, strings.Split(*plugins, ","))
	if err != nil {
		return err
	}
	log.Info("CNI plugins installed", "dir", *dst, "updated", wrote)
	return nil
}

func uninstall(ctx context.Context, args []string, log *slog.Logger) error {
	fs := flag.NewFlagSet("uninstall", flag.ContinueOnError)
	var c common
	c.register(fs)
	keepLease := fs.Bool("keep-lease", false, "do not release the subnet lease and node annotations (no API access needed)")
	binDir := fs.String("cni-bin-dir", install.DefaultBinDir, "where weft's plugins were installed (weft and weft-ipam are removed)")
	pol := policyFlags{}
	pol.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	opt := agent.Options{NodeName: c.node, CNIConfDir: c.confDir, SubnetFile: c.subnetFile, CNIBinDir: *binDir,
		EndpointDir: pol.endpointDir, PolicySocket: pol.socket}
	d := agent.UninstallDeps{Deps: agent.Deps{Log: log}, Leftovers: agent.NodeLeftovers{}, IPAMDataDir: pol.ipamDir,
		MasqLock: podnet.MasqLock}
	if !*keepLease {
		client, err := c.client()
		if err != nil {
			return err
		}
		d.Client = client
	}
	nk, closeKernel, err := openNodeKernel(log)
	if err != nil {
		return err
	}
	defer closeKernel()
	if mode, err := iptables.Detect(ctx, ""); err == nil {
		d.Tables = iptables.Runner{Mode: mode}
		nk.guard = encapguard.NewIPTables(iptables.Runner{Mode: mode})
	}
	d.Backends, d.Routes = factories(nk, log), nk.routes
	if err := agent.Uninstall(ctx, opt, d); err != nil {
		return err
	}
	if err := policy.Uninstall(ctx, ""); err != nil {
		return err
	}
	log.Info("weft removed from this node")
	return nil
}
