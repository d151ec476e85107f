package main

import (
	"context"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/weftnet/weft/internal/loop"
	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/shaping"
)

// shaper is weftd's pod bandwidth shaping: the service (switched by the
// ConfigMap through the agent), its loop, and a watch of this node's Pods
// whose bandwidth annotation changes mark the loop dirty.
type shaper struct {
	svc  *shaping.Service
	loop *loop.Runner
	pods corelisters.PodLister
}

func newShaper(endpointDir string, resync time.Duration, log *slog.Logger) *shaper {
	rec := &shaping.Reconciler{EndpointDir: endpointDir, Kernel: &shaping.Netlink{Log: log}, Log: log}
	s := &shaper{svc: shaping.NewService(rec)}
	s.loop = loop.New(loop.Config{Sync: s.svc.Sync, Resync: resync, BackoffMin: time.Second, BackoffMax: resync, Log: log})
	s.svc.Mark = s.loop.MarkDirty
	return s
}

// run watches the node's Pods and runs the loop until ctx ends.
func (s *shaper) run(ctx context.Context, client kubernetes.Interface, node string, log *slog.Logger) error {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", node).String()
	}))
	inf := f.Core().V1().Pods()
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { s.loop.MarkDirty() },
		UpdateFunc: func(o, n any) {
			op, ok1 := o.(*corev1.Pod)
			np, ok2 := n.(*corev1.Pod)
			if !ok1 || !ok2 || bandwidthChanged(op, np) {
				s.loop.MarkDirty()
			}
		},
		DeleteFunc: func(any) { s.loop.MarkDirty() },
	}); err != nil {
		return err
	}
	s.pods = inf.Lister()
	events, stop := policy.NewEventRecorder(client, node)
	defer stop()
	s.svc.Rec.SetPods(podSource{s.pods}, podEvents{s.pods, events})
	f.Start(ctx.Done())
	defer f.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return nil
	}
	log.Info("bandwidth shaping: pod watch synced", "leaf", s.svc.Rec.Kernel.Leaf())
	return s.loop.Run(ctx)
}

func bandwidthChanged(o, n *corev1.Pod) bool {
	for _, k := range []string{shaping.AnnotationIngress, shaping.AnnotationEgress} {
		if o.Annotations[k] != n.Annotations[k] {
			return true
		}
	}
	return o.UID != n.UID
}

// podSource answers the reconciler from the informer's cache.
type podSource struct{ l corelisters.PodLister }

func (p podSource) Pod(namespace, name string) (string, map[string]string, bool) {
	pod, err := p.l.Pods(namespace).Get(name)
	if err != nil {
		return "", nil, false
	}
	return string(pod.UID), pod.Annotations, true
}

// podEvents records a Warning Event on the pod.
type podEvents struct {
	l corelisters.PodLister
	r policy.EventRecorder
}

func (e podEvents) Warn(namespace, name, _, reason, message string) {
	if pod, err := e.l.Pods(namespace).Get(name); err == nil {
		e.r.Eventf(pod, corev1.EventTypeWarning, reason, "%s", message)
	}
}
