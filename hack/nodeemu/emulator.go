// Package nodeemu is the local cluster's node emulator: it plays kubelet
// plus container runtime for one node, and nothing more. It registers the
// Node and keeps its Lease, watches the Pods bound to the node, gives each
// (non-hostNetwork) pod a network namespace wired by the node's CNI config
// through libcni exactly as containerd would, "runs" the pod as tiny TCP/UDP
// servers answering with the pod's name, and runs hostNetwork pods (weftd's
// DaemonSet) as real processes in the node's namespaces: env and volumes
// resolved like kubelet, init containers, restarts with backoff, readiness
// and liveness probes, logs under <state-dir>/logs.
package nodeemu

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
)

// Config is the whole emulator configuration.
type Config struct {
	Node     NodeOptions
	CNI      CNIOptions
	Proc     ProcOptions
	Programs ProgramOptions
	StateDir string
	// APIHost/APIPort: the apiserver as hostNetwork pods should reach it
	// (KUBERNETES_SERVICE_HOST/PORT); CACert: fallback ca.crt.
	APIHost   string
	APIPort   string
	CACert    []byte
	Workers   int
	RetryBase time.Duration // first retry of a failed pod sync
	RetryMax  time.Duration
}

// withDefaults fills unset knobs with kubelet-like values.
func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = 4
	}
	if c.RetryBase <= 0 {
		c.RetryBase = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.Node.LeaseInterval <= 0 {
		c.Node.LeaseInterval = 10 * time.Second
	}
	if c.Node.StatusInterval <= 0 {
		c.Node.StatusInterval = 10 * time.Second
	}
	if c.Node.Pods <= 0 {
		c.Node.Pods = 110
	}
	if c.Node.KubeletVersion == "" {
		c.Node.KubeletVersion = "v1.37.2"
	}
	if c.CNI.NetnsDir == "" {
		c.CNI.NetnsDir = "/run/netns"
	}
	if c.Proc.LogDir == "" {
		c.Proc.LogDir = filepath.Join(c.StateDir, "logs")
	}
	if c.Proc.BackoffBase <= 0 {
		c.Proc.BackoffBase = 10 * time.Second
	}
	if c.Proc.BackoffMax <= 0 {
		c.Proc.BackoffMax = 5 * time.Minute
	}
	if c.Proc.StopGraceMax <= 0 {
		c.Proc.StopGraceMax = 30 * time.Second
	}
	return c
}

// Emulator is one emulated node.
type Emulator struct {
	cfg      Config
	client   kubernetes.Interface
	log      *slog.Logger
	sb       *sandboxes
	env      *envResolver
	vols     *volumeWriter
	recorder record.EventRecorder
	queue    workqueue.TypedRateLimitingInterface[string]
	lister   corelisters.PodLister
	bootID   string

	mu   sync.Mutex
	pods map[string]*podRun // by namespace/name
}

// podRun is what this node is running for one pod.
type podRun struct {
	key         string
	uid         types.UID
	hostNetwork bool
	ready       bool // sandbox / processes started
	ips         []string
	started     time.Time
	servers     *serverSet
	procs       *podProcs
	setupErr    string
	stopTokens  context.CancelFunc
	wrote       v1.PodStatus // last status this node posted...
	wroteRV     string       // ...and the resourceVersion it produced
}

// New builds an emulator; Run starts it.
func New(cfg Config, client kubernetes.Interface, log *slog.Logger) (*Emulator, error) {
	cfg = cfg.withDefaults()
	if cfg.Node.Name == "" || cfg.Node.IP == "" {
		return nil, fmt.Errorf("node name and node IP are required")
	}
	if cfg.StateDir == "" {
		return nil, fmt.Errorf("state dir is required")
	}
	e := &Emulator{
		cfg:    cfg,
		client: client,
		log:    log.With("node", cfg.Node.Name),
		sb:     newSandboxes(cfg.CNI, log.With("node", cfg.Node.Name)),
		pods:   map[string]*podRun{},
		bootID: nodeID(fmt.Sprintf("%s/%d", cfg.Node.Name, time.Now().UnixNano()), "boot"),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryBase, cfg.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: "pods"}),
	}
	e.env = &envResolver{client: client, apiHost: cfg.APIHost, apiPort: cfg.APIPort,
		nodeName: cfg.Node.Name, nodeIP: cfg.Node.IP, capacity: e.capacity()}
	e.vols = &volumeWriter{client: client, env: e.env, caPEM: cfg.CACert}
	return e, nil
}

// Run registers the node and serves its pods until ctx ends. Pod networks
// are left in place on exit (a restarted emulator adopts them); the
// processes of hostNetwork pods are stopped.
func (e *Emulator) Run(ctx context.Context) error {
	if err := os.MkdirAll(e.cfg.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	var node *v1.Node
	err := wait.PollUntilContextCancel(ctx, 2*time.Second, true, func(ctx context.Context) (bool, error) {
		var err error
		node, err = e.register(ctx)
		if err != nil {
			e.log.WarnContext(ctx, "node registration failed, retrying", "err", err)
			return false, nil
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("register node: %w", err)
	}

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: e.client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	e.recorder = broadcaster.NewRecorder(scheme.Scheme, v1.EventSource{Component: "kubelet", Host: e.cfg.Node.Name})

	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); e.nodeLoop(ctx, node) }()

	factory := informers.NewSharedInformerFactoryWithOptions(e.client, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", e.cfg.Node.Name).String()
		}))
	inf := factory.Core().V1().Pods()
	enqueue := func(obj interface{}) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			e.queue.Add(key)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj interface{}) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return fmt.Errorf("pod informer handler: %w", err)
	}
	e.lister = inf.Lister()
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		wg.Wait()
		return fmt.Errorf("pod informer did not sync: %w", ctx.Err())
	}
	e.reconcile(ctx)

	for i := 0; i < e.cfg.Workers; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); e.worker(ctx) }()
	}
	<-ctx.Done()
	e.queue.ShutDown()
	wg.Wait()
	e.shutdown()
	return nil
}

func (e *Emulator) worker(ctx context.Context) {
	for {
		key, quit := e.queue.Get()
		if quit {
			return
		}
		err := e.syncPod(ctx, key)
		switch {
		case err == nil:
			e.queue.Forget(key)
		case ctx.Err() != nil:
		case apierrors.IsConflict(err):
			// A stale informer copy: retry quietly once the cache caught up.
			e.log.DebugContext(ctx, "pod sync conflict, will retry", "pod", key, "err", err)
			e.queue.AddRateLimited(key)
		default:
			e.log.WarnContext(ctx, "pod sync failed, will retry", "pod", key, "err", err)
			e.queue.AddRateLimited(key)
		}
		e.queue.Done(key)
	}
}

// shutdown stops what runs as processes or goroutines; pod netns stay.
func (e *Emulator) shutdown() {
	e.mu.Lock()
	runs := make([]*podRun, 0, len(e.pods))
	for _, r := range e.pods {
		runs = append(runs, r)
	}
	e.mu.Unlock()
	for _, r := range runs {
		e.stopRun(r, 5*time.Second)
	}
}

func (e *Emulator) run(key string) *podRun {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.pods[key]
}

func (e *Emulator) setRun(key string, r *podRun) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if r == nil {
		delete(e.pods, key)
		return
	}
	e.pods[key] = r
}

// stopRun stops a pod's servers, processes and token refresher.
func (e *Emulator) stopRun(r *podRun, grace time.Duration) {
	if r.stopTokens != nil {
		r.stopTokens()
	}
	r.servers.Close()
	if r.procs != nil {
		r.procs.Stop(grace)
		if r.procs.sandbox != nil {
			_ = os.RemoveAll(filepath.Join(e.cfg.StateDir, "pods", string(r.uid)))
		}
	}
}

// reconcile runs once after the informer synced: CNI DEL for cached
// attachments of pods that are gone, and removal of stale wlp-* netns.
func (e *Emulator) reconcile(ctx context.Context) {
	pods, err := e.lister.List(everything())
	if err != nil {
		e.log.WarnContext(ctx, "list pods for reconcile", "err", err)
		return
	}
	keep := map[types.UID]bool{}
	keepNS := map[string]bool{}
	for _, p := range pods {
		if p.Spec.NodeName == e.cfg.Node.Name && p.DeletionTimestamp == nil && !p.Spec.HostNetwork &&
			p.Status.Phase != v1.PodSucceeded && p.Status.Phase != v1.PodFailed {
			keep[p.UID] = true
			keepNS[NetnsName(p.UID)] = true
		}
	}
	stale, err := e.sb.staleAttachments(keep)
	if err != nil {
		e.log.WarnContext(ctx, "reconcile", "err", err)
	}
	for _, a := range stale {
		if err := e.sb.delAttachment(ctx, a); err != nil {
			e.log.WarnContext(ctx, "DEL stale attachment", "sandbox", a.ContainerID, "err", err)
			continue
		}
		e.log.InfoContext(ctx, "released network of a pod that is gone", "sandbox", a.ContainerID,
			"pod", argValue(a.CniArgs, "K8S_POD_NAMESPACE")+"/"+argValue(a.CniArgs, "K8S_POD_NAME"))
	}
	names, err := listPodNetns(e.cfg.CNI.NetnsDir)
	if err != nil {
		e.log.WarnContext(ctx, "reconcile", "err", err)
	}
	for _, n := range names {
		if keepNS[n] {
			continue
		}
		if err := removeNetns(filepath.Join(e.cfg.CNI.NetnsDir, n)); err != nil {
			e.log.WarnContext(ctx, "remove stale netns", "netns", n, "err", err)
			continue
		}
		e.log.InfoContext(ctx, "removed stale pod netns", "netns", n)
	}
}
