package policy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	corelisters "k8s.io/client-go/listers/core/v1"
	netlisters "k8s.io/client-go/listers/networking/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/loop"

	"github.com/weftnet/weft/policy/rules"
)

// Metrics receives the controller's measurements; weftd adapts it to
// Prometheus. Implementations must be safe for concurrent use.
type Metrics interface {
	// SyncDone reports one sync: render and apply durations, and its error.
	SyncDone(render, apply time.Duration, err error)
	// RenderErrors reports how many policies currently fail to render.
	RenderErrors(n int)
	// EndpointProgrammed reports a pod whose rules are now in place, with
	// the time since the Pod was created (isolation-before-start latency).
	EndpointProgrammed(namespace, name string, sinceCreation time.Duration)
}

// ControllerConfig holds what the Controller needs besides informers.
type ControllerConfig struct {
	NodeName        string
	EndpointDir     string // endpoint.DefaultDir on a node
	Dataplane       Dataplane
	Render          rules.Config
	ResyncInterval  time.Duration // kernel read-back and repair; default 30s
	MinSyncInterval time.Duration // rate limit between syncs; default 100ms
	Metrics         Metrics       // may be nil
	Log             *slog.Logger  // may be nil
	// BridgeNetfilter makes Run enable bridge-nf-call-iptables in its own
	// network namespace (weftd's: the node's), so same-node traffic is
	// policed. A failure is logged, kept in Errors() and reported as
	// CondBridgeNetfilter; it is re-checked on every resync.
	BridgeNetfilter       bool
	BridgeNetfilterSysctl string        // "" = the kernel's; tests point it elsewhere
	Health                Health        // readiness conditions; may be nil
	Events                EventRecorder // Warning Events on unenforceable policies; may be nil
	// Rebuild, when set, rebuilds missing endpoint records once, after the
	// informers synced and before the first sync (rebuild.go).
	Rebuild *EndpointRebuild
	// Conntrack, when set, is the node's conntrack table: after a change,
	// entries of flows the new rules deny are deleted (see flowReaper).
	Conntrack ConntrackTable
}

// Controller keeps this node's policy dataplane converged: informer and
// endpoint-directory events only mark it dirty; one sync renders everything
// and applies it; syncs are rate-limited and coalesced; a periodic resync
// reads the kernel back and repairs drift; failures retry with backoff.
type Controller struct {
	cfg      ControllerConfig
	renderer *rules.Renderer
	factory  informers.SharedInformerFactory
	pods     corelisters.PodLister
	nss      corelisters.NamespaceLister
	pols     netlisters.NetworkPolicyLister
	synced   []cache.InformerSynced
	loop     *loop.Runner
	mu       sync.Mutex
	ready    map[string]string // hostVeth -> pod UID, as last programmed
	seen     map[string]bool   // pod UIDs whose latency was reported
	errs     []error
	brnfErr  error
	changed  chan struct{} // closed and replaced after every successful sync
	log      *slog.Logger
	handlers []cache.ResourceEventHandlerRegistration
	health   syncHealth
	events   map[string]eventState // policy ns/name -> last Event (sync goroutine only)
	flows    *flowReaper           // nil without ControllerConfig.Conntrack
	last     *rules.State          // the State in the kernel (weftctl's traces)
	lastEps  []endpoint.Endpoint   // the endpoints it was rendered for
}

// NewController wires the controller to the factory's Pod, Namespace and
// NetworkPolicy informers. The caller may start the factory itself; Run
// starts it too (idempotent).
func NewController(factory informers.SharedInformerFactory, cfg ControllerConfig) (*Controller, error) {
	if cfg.Dataplane == nil {
		return nil, errors.New("policy controller: no dataplane")
	}
	if cfg.EndpointDir == "" {
		cfg.EndpointDir = endpoint.DefaultDir
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = 30 * time.Second
	}
	if cfg.MinSyncInterval <= 0 {
		cfg.MinSyncInterval = 100 * time.Millisecond
	}
	if cfg.Render.Bridge == "" {
		cfg.Render = rules.DefaultConfig()
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	c := &Controller{cfg: cfg, renderer: rules.NewRenderer(cfg.Render), factory: factory, ready: map[string]string{},
		seen: map[string]bool{}, changed: make(chan struct{}), log: log.With("component", "policy"), events: map[string]eventState{}}
	c.loop = loop.New(loop.Config{Sync: c.pass, MinInterval: cfg.MinSyncInterval, Resync: cfg.ResyncInterval,
		BackoffMin: 200 * time.Millisecond, BackoffMax: 30 * time.Second, Log: c.log})
	c.flows = newFlowReaper(cfg.Conntrack, cfg.Render.Bridge, c.log, cfg.Metrics)
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.loop.MarkDirty() },
		UpdateFunc: func(any, any) { c.loop.MarkDirty() },
		DeleteFunc: func(any) { c.loop.MarkDirty() },
	}
	pi := factory.Core().V1().Pods()
	ni := factory.Core().V1().Namespaces()
	npi := factory.Networking().V1().NetworkPolicies()
	for _, inf := range []cache.SharedIndexInformer{pi.Informer(), ni.Informer(), npi.Informer()} {
		reg, err := inf.AddEventHandler(h)
		if err != nil {
			return nil, fmt.Errorf("policy controller: event handler: %w", err)
		}
		c.handlers = append(c.handlers, reg)
		c.synced = append(c.synced, inf.HasSynced)
	}
	c.pods, c.nss, c.pols = pi.Lister(), ni.Lister(), npi.Lister()
	return c, nil
}

// Run syncs until ctx ends. Nothing is written before the informers synced.
func (c *Controller) Run(ctx context.Context) error {
	c.setHealth(CondSync, "not yet synced")
	c.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		return fmt.Errorf("policy controller: informers did not sync: %w", ctx.Err())
	}
	if err := os.MkdirAll(c.cfg.EndpointDir, 0o755); err != nil {
		return fmt.Errorf("policy controller: endpoint dir: %w", err)
	}
	if c.cfg.Rebuild != nil {
		c.rebuildEndpoints(ctx)
	}
	go c.watchEndpoints(ctx)
	go c.flows.run(ctx)
	return c.loop.Run(ctx)
}

// pass is one sync of the loop. A full one (the first, each resync, a
// retry) reads the kernel back and re-checks bridge netfilter.
func (c *Controller) pass(ctx context.Context, full bool) error {
	if full {
		c.checkBridgeNetfilter(ctx)
	}
	err := c.sync(ctx, full)
	c.syncDone(err)
	return err
}

// sync renders the whole desired state and applies it.
func (c *Controller) sync(ctx context.Context, readBack bool) error {
	t0 := time.Now()
	if p, ok := c.cfg.Dataplane.(interface{ Prefetch(context.Context) }); ok && readBack {
		p.Prefetch(ctx) // read the kernel while rendering
	}
	in, created, err := c.input()
	if err != nil {
		if m := c.cfg.Metrics; m != nil {
			m.SyncDone(time.Since(t0), 0, err)
		}
		return err
	}
	st := c.renderer.Render(in)
	t1 := time.Now()
	_, err = c.cfg.Dataplane.Apply(ctx, st, readBack)
	t2 := time.Now()
	if m := c.cfg.Metrics; m != nil {
		m.SyncDone(t1.Sub(t0), t2.Sub(t1), err)
		m.RenderErrors(len(st.Errors))
	}
	if err != nil {
		return err
	}
	c.flows.applied(st, in.Endpoints)
	c.reportPolicyErrors(st.Errors)
	c.mu.Lock()
	defer c.mu.Unlock()
	if fmt.Sprint(st.Errors) != fmt.Sprint(c.errs) { // log changes, not every sync
		for _, e := range st.Errors {
			c.log.Error("network policy not enforceable; selected pods fail closed", "err", e)
		}
	}
	c.errs = st.Errors
	c.last, c.lastEps = st, in.Endpoints
	c.ready = map[string]string{}
	seen := map[string]bool{} // only endpoints still here: no growth over time
	for _, e := range st.Endpoints {
		if !e.Ready {
			continue
		}
		c.ready[e.HostVeth] = e.UID
		seen[e.UID] = true
		if ct, ok := created[e.Namespace+"/"+e.Name]; ok && !c.seen[e.UID] {
			if m := c.cfg.Metrics; m != nil {
				m.EndpointProgrammed(e.Namespace, e.Name, t2.Sub(ct))
			}
		}
	}
	c.seen = seen
	close(c.changed)
	c.changed = make(chan struct{})
	return nil
}

func (c *Controller) input() (rules.Input, map[string]time.Time, error) {
	var in rules.Input
	pols, err := c.pols.List(labels.Everything())
	if err != nil {
		return in, nil, fmt.Errorf("policy controller: list policies: %w", err)
	}
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		return in, nil, fmt.Errorf("policy controller: list pods: %w", err)
	}
	nss, err := c.nss.List(labels.Everything())
	if err != nil {
		return in, nil, fmt.Errorf("policy controller: list namespaces: %w", err)
	}
	eps, err := endpoint.List(c.cfg.EndpointDir)
	if err != nil {
		c.log.Warn("endpoint records skipped", "err", err) // good records are still used
	}
	in.Policies = append([]*networkingv1.NetworkPolicy(nil), pols...)
	in.Pods = append([]*corev1.Pod(nil), pods...)
	in.Namespaces = append([]*corev1.Namespace(nil), nss...)
	in.Endpoints = eps
	local := map[string]bool{}
	for _, e := range eps {
		local[e.PodNamespace+"/"+e.PodName] = true
	}
	created := map[string]time.Time{}
	for _, p := range pods {
		if k := p.Namespace + "/" + p.Name; local[k] {
			created[k] = p.CreationTimestamp.Time
		}
	}
	return in, created, nil
}

// Programmed reports whether the endpoint's rules (with its pod's
// policies) are in the kernel as of the last successful sync.
func (c *Controller) Programmed(hostVeth string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.ready[hostVeth]
	return ok
}

// WaitProgrammed blocks until Programmed(hostVeth) or ctx ends. The CNI
// plugin's ADD waits on this (through weftd) before it returns.
func (c *Controller) WaitProgrammed(ctx context.Context, hostVeth string) error {
	c.loop.MarkDirty() // a new record may not have produced an event yet
	for {
		c.mu.Lock()
		_, ok := c.ready[hostVeth]
		ch := c.changed
		c.mu.Unlock()
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("policy: endpoint %s not programmed: %w", hostVeth, ctx.Err())
		case <-ch:
		}
	}
}

// Errors returns the policies that failed to render in the last sync, and
// a bridge-netfilter failure if there was one.
func (c *Controller) Errors() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := append([]error(nil), c.errs...)
	if c.brnfErr != nil {
		out = append(out, c.brnfErr)
	}
	return out
}

// watchEndpoints marks the controller dirty when records change: inotify
// on the directory, or polling once a second where inotify is unavailable.
func (c *Controller) watchEndpoints(ctx context.Context) {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err == nil {
		_, err = unix.InotifyAddWatch(fd, c.cfg.EndpointDir,
			unix.IN_CREATE|unix.IN_MOVED_TO|unix.IN_MOVED_FROM|unix.IN_DELETE|unix.IN_CLOSE_WRITE)
		if err != nil {
			unix.Close(fd)
		}
	}
	if err != nil {
		c.log.Warn("inotify unavailable, polling endpoint records", "err", err)
		c.pollEndpoints(ctx)
		return
	}
	f := os.NewFile(uintptr(fd), "inotify")
	go func() { <-ctx.Done(); f.Close() }()
	buf := make([]byte, 64*1024)
	for {
		if _, err := f.Read(buf); err != nil {
			if ctx.Err() == nil {
				c.log.Warn("inotify read failed, polling endpoint records", "err", err)
				c.pollEndpoints(ctx)
			}
			return
		}
		c.loop.MarkDirty()
	}
}

func (c *Controller) pollEndpoints(ctx context.Context) {
	var last string
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		eps, _ := endpoint.List(c.cfg.EndpointDir)
		key := fmt.Sprint(eps)
		if key != last {
			last = key
			c.loop.MarkDirty()
		}
	}
}
