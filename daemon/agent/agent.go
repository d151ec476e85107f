// Package agent wires weftd together: informers on Nodes and the weft
// ConfigMap, the subnet lease, the backend manager, masquerade rules, the
// subnet file and the CNI conflist, with health reported through
// daemon/api. It is level-triggered: informer events only mark the agent
// dirty, one sync computes and converges everything, and nothing is
// written before the informers have synced. A periodic full resync
// re-reads the kernel and repairs drift.
package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/daemon/fabric"
	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/daemon/masq"
	"github.com/weftnet/weft/daemon/subnet"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/loop"
	"github.com/weftnet/weft/internal/subnetfile"
)

// Options are weftd's node-level settings (flags and environment).
type Options struct {
	NodeName string
	// PublicIP overrides the node's InternalIP as its underlay address.
	PublicIP       netip.Addr
	CNIConfDir     string
	CNIBinDir      string // checked for the chained plugins; "" skips the check
	SubnetFile     string
	ResyncInterval time.Duration
	// EndpointDir and PolicySocket go into the conflist: the plugin records
	// each attachment there and waits on the socket until its policy rules
	// are in place ("" leaves them out).
	EndpointDir  string
	PolicySocket string
}

// DetailMigration is the /readyz detail of a backend migration in
// progress (absent when none runs).
const DetailMigration = "backend-migration"

// Host finds the node's underlay link.
type Host interface {
	// UnderlayLink returns the name and MTU of the link holding ip.
	UnderlayLink(ip netip.Addr) (name string, mtu int, err error)
}

// Deps are the agent's collaborators, real or fake.
type Deps struct {
	Client   kubernetes.Interface
	Backends *fabric.Manager
	Tables   masq.Tables
	Host     Host
	Status   *api.Status
	Metrics  *api.Metrics
	Log      *slog.Logger
	// Shaper is pod bandwidth shaping (shaping.Service); nil: none.
	Shaper Shaper
}

// Shaper takes net-conf.json's bandwidth section: validated with the rest
// of the configuration, applied on every sync with the pods' MTU; it
// reports whether Weft shapes (then the conflist asks it, not the
// reference bandwidth plugin).
type Shaper interface {
	Validate(raw json.RawMessage) error
	Configure(raw json.RawMessage, mtu int) (bool, error)
}

// Agent is one node's weftd.
type Agent struct {
	opt     Options
	d       Deps
	subnets *subnet.Manager
	nodes   corelisters.NodeLister
	cms     corelisters.ConfigMapNamespaceLister
	st      state
}

// state is what the agent has applied so far.
type state struct {
	cfg       *config.NetConf
	lease     subnet.Assignment
	leaseNet  netip.Prefix
	masq      *masq.Masq
	lastEvent string
	others    string
}

// New returns an agent.
func New(opt Options, d Deps) *Agent {
	if opt.ResyncInterval <= 0 {
		opt.ResyncInterval = 10 * time.Second
	}
	if opt.SubnetFile == "" {
		opt.SubnetFile = subnetfile.DefaultPath
	}
	if opt.CNIConfDir == "" {
		opt.CNIConfDir = install.DefaultConfDir
	}
	d.Log = d.Log.With("node", opt.NodeName)
	return &Agent{opt: opt, d: d, subnets: subnet.New(d.Client, opt.NodeName, d.Log)}
}

// Run starts the informers and syncs until ctx ends. It returns only when
// ctx is done or the informers cannot sync.
func (a *Agent) Run(ctx context.Context) error {
	lp := loop.New(loop.Config{Sync: a.pass, Resync: a.opt.ResyncInterval,
		BackoffMin: time.Second, BackoffMax: a.opt.ResyncInterval, Log: a.d.Log})
	a.d.Backends.SetWake(lp.MarkDirty) // the end of a migration's drain
	all := informers.NewSharedInformerFactory(a.d.Client, 0)
	cmf := informers.NewSharedInformerFactoryWithOptions(a.d.Client, 0, informers.WithNamespace(config.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = "metadata.name=" + config.Name }))
	nodeInf := all.Core().V1().Nodes()
	cmInf := cmf.Core().V1().ConfigMaps()
	if _, err := nodeInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { lp.MarkDirty() },
		DeleteFunc: func(any) { lp.MarkDirty() },
		UpdateFunc: func(o, n any) {
			if relevantNodeChange(o, n) {
				lp.MarkDirty()
			}
		},
	}); err != nil {
		return fmt.Errorf("node informer: %w", err)
	}
	if _, err := cmInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { lp.MarkDirty() }, DeleteFunc: func(any) { lp.MarkDirty() },
		UpdateFunc: func(any, any) { lp.MarkDirty() },
	}); err != nil {
		return fmt.Errorf("configmap informer: %w", err)
	}
	a.nodes = nodeInf.Lister()
	a.cms = cmInf.Lister().ConfigMaps(config.Namespace)
	all.Start(ctx.Done())
	cmf.Start(ctx.Done())
	defer all.Shutdown()
	defer cmf.Shutdown()
	a.d.Log.Info("waiting for informers to sync")
	if !cache.WaitForCacheSync(ctx.Done(), nodeInf.Informer().HasSynced, cmInf.Informer().HasSynced) {
		if ctx.Err() != nil {
			return nil
		}
		return errors.New("informers did not sync")
	}
	a.d.Log.Info("informers synced")
	return lp.Run(ctx)
}

// pass is one sync of the loop, counted and reflected in the ready gauge.
func (a *Agent) pass(ctx context.Context, full bool) error {
	err := a.sync(ctx, full)
	if err != nil {
		a.d.Metrics.SyncErrors.Inc()
	}
	ready, _ := a.d.Status.Ready()
	a.d.Metrics.Ready.Set(map[bool]float64{true: 1, false: 0}[ready])
	return err
}

// relevantNodeChange filters out Node updates that cannot change the
// desired state (status heartbeats, conditions).
func relevantNodeChange(o, n any) bool {
	on, ok1 := o.(*corev1.Node)
	nn, ok2 := n.(*corev1.Node)
	if !ok1 || !ok2 {
		return true
	}
	if on.Spec.PodCIDR != nn.Spec.PodCIDR || strings.Join(on.Spec.PodCIDRs, ",") != strings.Join(nn.Spec.PodCIDRs, ",") {
		return true
	}
	if fmt.Sprint(on.Status.Addresses) != fmt.Sprint(nn.Status.Addresses) {
		return true
	}
	if !maps.Equal(on.Labels, nn.Labels) {
		return true // e.g. weft.dev/route-reflector, an external BGP peer's nodeSelector
	}
	for k, v := range nn.Annotations {
		if strings.HasPrefix(k, backend.AnnoPrefix) && on.Annotations[k] != v {
			return true
		}
	}
	for k := range on.Annotations {
		if _, ok := nn.Annotations[k]; !ok && strings.HasPrefix(k, backend.AnnoPrefix) {
			return true
		}
	}
	return false
}

// sync converges everything once. full additionally re-checks the
// masquerade rules (the backend reads the kernel back on every sync).
func (a *Agent) sync(ctx context.Context, full bool) error {
	a.d.Status.Beat()
	// No API call or exec may hang a sync (and so the agent) forever.
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	// A configuration problem is reported by loadConfig (log, Event,
	// readiness) and needs no retry: a change of the ConfigMap or of the
	// nodes marks the agent dirty again.
	cfg, _ := a.loadConfig(ctx)
	if cfg == nil {
		return nil
	}
	node, err := a.nodes.Get(a.opt.NodeName)
	if err != nil {
		a.d.Status.Set(api.CondLease, "own Node object: "+err.Error())
		return fmt.Errorf("own node %s: %w", a.opt.NodeName, err)
	}
	if err := a.ensureLease(ctx, cfg, node); err != nil {
		a.d.Status.Set(api.CondLease, err.Error())
		return err
	}
	a.d.Status.Set(api.CondLease, "")
	local, err := a.localNode(cfg, node)
	if err != nil {
		a.d.Status.Set(api.CondBackend, err.Error())
		return err
	}
	pub, err := a.d.Backends.Ensure(ctx, cfg.Backend, local)
	if err != nil {
		a.d.Status.Set(api.CondBackend, err.Error())
		return err
	}
	if err := a.publish(ctx, node, local, pub); err != nil {
		return err
	}
	if err := a.writeSubnetFile(cfg, pub, local.UnderlayMTU); err != nil {
		a.d.Status.Set(api.CondBackend, err.Error())
		return err
	}
	if err := a.ensureMasq(ctx, cfg, full); err != nil {
		a.d.Status.Set(api.CondMasq, err.Error())
		return err
	}
	a.d.Status.Set(api.CondMasq, "")
	start := time.Now()
	res, err := a.d.Backends.Apply(ctx, a.peers())
	a.d.Metrics.ConvergeTime.Observe(time.Since(start).Seconds())
	a.d.Metrics.BackendChanges.Add(float64(res.Changes))
	if err != nil {
		a.d.Status.Set(api.CondBackend, "converge: "+err.Error())
		return fmt.Errorf("converge backend: %w", err)
	}
	a.d.Metrics.Peers.Set(float64(res.Peers))
	a.d.Status.Set(api.CondBackend, "")
	a.d.Status.Detail("peer-problems", strings.Join(res.Problems, "; "))
	if res.Changes > 0 {
		a.d.Log.Info("backend converged", "peers", res.Peers, "changes", res.Changes, "problems", len(res.Problems))
	}
	// A device recreated by Apply has a new MAC: republish.
	if err := a.publish(ctx, node, local, a.d.Backends.Published()); err != nil {
		return err
	}
	shaped, err := a.configureShaping(cfg, pub, local.UnderlayMTU)
	if err != nil {
		return err
	}
	if err := a.writeConflist(cfg, pub, local.UnderlayMTU, shaped); err != nil {
		a.d.Status.Set(api.CondConflist, err.Error())
		return err
	}
	a.d.Status.Set(api.CondConflist, "")
	return nil
}

// ensureLease re-checks the node's subnet on every sync (subnet.Ensure):
// a Lease that vanished or changed holder is claimed again or given up.
func (a *Agent) ensureLease(ctx context.Context, cfg *config.NetConf, node *corev1.Node) error {
	asg, err := a.subnets.Ensure(ctx, node, cfg.Network, cfg.SubnetLen, a.st.lease)
	if err != nil {
		if a.st.lease.Subnet.IsValid() && !asg.Subnet.IsValid() {
			// Lost: no new pod may take an address of it.
			a.st.lease = asg
			if rerr := os.Remove(a.opt.SubnetFile); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) {
				err = errors.Join(err, rerr)
			}
		}
		return fmt.Errorf("subnet lease: %w", err)
	}
	if asg == a.st.lease && a.st.leaseNet == cfg.Network {
		return nil
	}
	if a.st.lease.Subnet.IsValid() && asg.Subnet != a.st.lease.Subnet {
		a.d.Log.Warn("node subnet changed", "old", a.st.lease.Subnet, "new", asg.Subnet)
	}
	a.d.Log.Info("node subnet", "subnet", asg.Subnet, "source", asg.Source)
	a.st.lease, a.st.leaseNet = asg, cfg.Network
	return nil
}

// InternalIP returns the node's first IPv4 InternalIP.
func InternalIP(n *corev1.Node) netip.Addr {
	for _, ad := range n.Status.Addresses {
		if ad.Type != corev1.NodeInternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(ad.Address); err == nil && ip.Is4() {
			return ip
		}
	}
	return netip.Addr{}
}

func (a *Agent) localNode(cfg *config.NetConf, node *corev1.Node) (backend.LocalNode, error) {
	ip := a.opt.PublicIP
	if !ip.IsValid() {
		ip = InternalIP(node)
	}
	if !ip.IsValid() {
		return backend.LocalNode{}, fmt.Errorf("node %s has no IPv4 InternalIP (set --public-ip)", node.Name)
	}
	link, mtu, err := a.d.Host.UnderlayLink(ip)
	if err != nil {
		return backend.LocalNode{}, fmt.Errorf("underlay link for %s: %w", ip, err)
	}
	self := PeerFromNode(node)
	return backend.LocalNode{Name: a.opt.NodeName, UnderlayIP: ip, UnderlayLink: link, UnderlayMTU: mtu,
		PodMTU: podMTU(cfg, backend.Published{}, mtu), PodCIDR: a.st.lease.Subnet, Network: cfg.Network, Labels: self.Labels, Attrs: self.Attrs}, nil
}

// publish writes the node's weft.dev/* annotations when the informer's
// copy differs.
func (a *Agent) publish(ctx context.Context, node *corev1.Node, local backend.LocalNode, pub backend.Published) error {
	want := map[string]string{
		backend.AnnoPodCIDR:  local.PodCIDR.String(),
		backend.AnnoPublicIP: local.UnderlayIP.String(),
	}
	st := a.d.Backends.Snapshot()
	want[backend.AnnoBackend], want[backend.AnnoMigration] = st.Sending, st.Phase
	want[backend.AnnoBackends] = strings.Join(st.Decapsulates, ",")
	migration := ""
	if st.Phase != "" {
		migration = fmt.Sprintf("phase %s; sending %s; receiving %s", st.Phase, st.Sending, want[backend.AnnoBackends])
	}
	a.d.Status.Detail(DetailMigration, migration)
	for k, v := range pub.Attrs {
		want[k] = v
	}
	same := true
	for k, v := range want {
		if node.Annotations[k] != v {
			same = false
		}
	}
	if same {
		return nil
	}
	wrote, err := a.subnets.Publish(ctx, want)
	if err != nil {
		return fmt.Errorf("publish node annotations: %w", err)
	}
	if wrote {
		a.d.Log.Info("published node annotations", "annotations", want)
	}
	return nil
}

// podMTU is the pods' MTU: net-conf.json's mtu, else the underlay's
// minus the largest overhead of any backend (VXLAN's 50), never more than
// the running backends allow. Pods thus keep one MTU across every backend
// switch (a pod's MTU is only set at ADD), at the price of 30 bytes on
// udp and 50 on bgp Never.
func podMTU(cfg *config.NetConf, pub backend.Published, underlayMTU int) int {
	if cfg.MTU != 0 {
		return cfg.MTU
	}
	mtu := pub.MTU
	if m := underlayMTU - backend.MaxOverhead; underlayMTU > 0 && (mtu == 0 || m < mtu) {
		mtu = m
	}
	return mtu
}

func (a *Agent) writeSubnetFile(cfg *config.NetConf, pub backend.Published, underlayMTU int) error {
	f := &subnetfile.File{Network: cfg.Network, Subnet: a.st.lease.Subnet, MTU: podMTU(cfg, pub, underlayMTU)}
	if cur, err := subnetfile.Read(a.opt.SubnetFile); err == nil && *cur == *f {
		return nil
	}
	if err := subnetfile.Write(a.opt.SubnetFile, f); err != nil {
		return fmt.Errorf("subnet file: %w", err)
	}
	a.d.Log.Info("wrote subnet file", "path", a.opt.SubnetFile, "subnet", f.Subnet, "mtu", f.MTU)
	return nil
}

func (a *Agent) ensureMasq(ctx context.Context, cfg *config.NetConf, full bool) error {
	if a.st.masq == nil || a.st.masq.Network() != cfg.Network {
		a.st.masq = masq.New(a.d.Tables, cfg.Network)
		full = true
	}
	if !full {
		return nil
	}
	wrote, err := a.st.masq.Apply(ctx)
	if err != nil {
		return err
	}
	if wrote {
		a.d.Log.Info("masquerade rules written", "network", cfg.Network)
	}
	return nil
}

// configureShaping hands the bandwidth section to the shaper; weftd shapes
// only with the plugin's endpoint records and the local socket.
func (a *Agent) configureShaping(cfg *config.NetConf, pub backend.Published, underlayMTU int) (bool, error) {
	if a.d.Shaper == nil {
		return false, nil
	}
	raw := cfg.Bandwidth
	if a.opt.EndpointDir == "" || a.opt.PolicySocket == "" {
		raw = nil
	}
	shaped, err := a.d.Shaper.Configure(raw, podMTU(cfg, pub, underlayMTU))
	if err != nil {
		return false, fmt.Errorf("bandwidth: %w", err)
	}
	return shaped, nil
}

func (a *Agent) writeConflist(cfg *config.NetConf, pub backend.Published, underlayMTU int, shaped bool) error {
	mtu := podMTU(cfg, pub, underlayMTU)
	if a.opt.CNIBinDir != "" {
		if missing := install.MissingBinaries(a.opt.CNIBinDir); len(missing) > 0 {
			return fmt.Errorf("plugins %v missing in %s (install-cni init container)", missing, a.opt.CNIBinDir)
		}
	}
	data, err := install.Conflist(install.ConflistOptions{CNIVersion: cfg.CNIVersion, SubnetFile: a.opt.SubnetFile, MTU: mtu,
		EndpointDir: a.opt.EndpointDir, PolicySocket: a.opt.PolicySocket, ShapingSocket: map[bool]string{true: a.opt.PolicySocket}[shaped]})
	if err != nil {
		return err
	}
	changed, err := install.WriteConflist(a.opt.CNIConfDir, data)
	if err != nil {
		return fmt.Errorf("conflist: %w", err)
	}
	if changed {
		a.d.Log.Info("wrote CNI conflist", "dir", a.opt.CNIConfDir, "cniVersion", cfg.CNIVersion, "mtu", mtu)
	}
	others, shadow, err := install.OtherConfigs(a.opt.CNIConfDir)
	if err != nil {
		return err
	}
	desc := strings.Join(others, ", ")
	if len(shadow) > 0 {
		desc += " (" + strings.Join(shadow, ", ") + " sort before " + install.ConflistName + " and shadow it)"
	}
	if desc != a.st.others {
		a.st.others = desc
		if desc != "" {
			a.d.Log.Warn("other CNI configurations present", "dir", a.opt.CNIConfDir, "files", desc)
		}
	}
	a.d.Status.Detail("other-cni-configs", desc)
	return nil
}

func (a *Agent) peers() []backend.Peer {
	nodes, err := a.nodes.List(everything())
	if err != nil {
		return nil
	}
	var out []backend.Peer
	for _, n := range nodes {
		if n.Name == a.opt.NodeName || n.Annotations[backend.AnnoBackends] == "" {
			continue // ourselves, or weftd not (yet) running there
		}
		out = append(out, PeerFromNode(n))
	}
	return out
}

// PeerFromNode reads what a backend needs from a Node's annotations, with
// its InternalIP and spec.podCIDR as fallbacks.
func PeerFromNode(n *corev1.Node) backend.Peer {
	p := backend.Peer{Name: n.Name, Attrs: map[string]string{}, Labels: maps.Clone(n.Labels)}
	for k, v := range n.Annotations {
		if strings.HasPrefix(k, backend.AnnoPrefix) {
			p.Attrs[k] = v
		}
	}
	if ip, err := netip.ParseAddr(n.Annotations[backend.AnnoPublicIP]); err == nil {
		p.UnderlayIP = ip
	} else {
		p.UnderlayIP = InternalIP(n)
	}
	if c, err := netip.ParsePrefix(n.Annotations[backend.AnnoPodCIDR]); err == nil {
		p.PodCIDRs = []netip.Prefix{c}
	} else if c := subnet.NodePodCIDR(n); c.IsValid() {
		p.PodCIDRs = []netip.Prefix{c}
	}
	p.Backends = backend.ParseBackends(n.Annotations[backend.AnnoBackends])
	return p
}
