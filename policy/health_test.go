package policy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/endpoint"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/policy/rules/rulestest"
)

// recHealth records readiness conditions as api.Status does.
type recHealth struct {
	mu   sync.Mutex
	cond map[string]string
	seen map[string]bool // conditions ever set
}

func newRecHealth() *recHealth { return &recHealth{cond: map[string]string{}, seen: map[string]bool{}} }

func (h *recHealth) Set(cond, reason string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.seen[cond] = true
	h.cond[cond] = reason
}

// get returns the reason of cond and whether it was ever reported.
func (h *recHealth) get(cond string) (string, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.cond[cond], h.seen[cond]
}

func (h *recHealth) met(cond string) bool {
	r, seen := h.get(cond)
	return seen && r == ""
}

func startController(t *testing.T, client *fake.Clientset, cfg ControllerConfig) *Controller {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ctl, err := NewController(informers.NewSharedInformerFactory(client, 0), cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return ctl
}

// A sync that keeps failing makes the controller not ready with the error
// (after SyncFailuresNotReady attempts), counts in
// weft_policy_sync_errors_total as served on /metrics, and readiness comes
// back with the first sync that works.
func TestHealthSyncFailures(t *testing.T) {
	reg := prometheus.NewRegistry()
	met, err := NewPrometheusMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	h := newRecHealth()
	fdp := NewFakeDataplane()
	ctl := startController(t, fake.NewClientset(), ControllerConfig{EndpointDir: t.TempDir(), Dataplane: fdp,
		MinSyncInterval: 5 * time.Millisecond, ResyncInterval: 20 * time.Millisecond, Metrics: met, Health: h})
	testutil.Eventually(t, "ready after the first sync", func() bool { return h.met(CondSync) })
	if ok, r := ctl.Healthy(); !ok {
		t.Fatalf("Healthy() = false, %q after a good sync", r)
	}
	if n := syncErrors(t, reg); n != 0 {
		t.Fatalf("sync errors before any failure: %v", n)
	}

	fdp.SetError(errors.New("iptables-restore: line 7 failed"))
	testutil.Eventually(t, "not ready while syncs fail", func() bool {
		r, _ := h.get(CondSync)
		return strings.Contains(r, "syncs in a row failed") && strings.Contains(r, "iptables-restore: line 7 failed")
	})
	if ok, r := ctl.Healthy(); ok || !strings.Contains(r, "line 7") {
		t.Fatalf("Healthy() = %v, %q while failing", ok, r)
	}
	if n := syncErrors(t, reg); n < SyncFailuresNotReady {
		t.Fatalf("weft_policy_sync_errors_total = %v after %d failed syncs", n, SyncFailuresNotReady)
	}

	fdp.SetError(nil)
	testutil.Eventually(t, "ready again once a sync works", func() bool { return h.met(CondSync) })
}

// syncErrors reads weft_policy_sync_errors_total from the registry.
func syncErrors(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "weft_policy_sync_errors_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("weft_policy_sync_errors_total not registered")
	return 0
}

// Bridge netfilter that cannot be enabled is a readiness reason naming the
// sysctl; the resync re-checks it, and once the sysctl can be written the
// controller switches it on and is ready again. The sysctl is a symlink
// here, swapped atomically from a directory (unreadable as a value) to a
// file holding 0.
func TestHealthBridgeNetfilter(t *testing.T) {
	dir := t.TempDir()
	sysctl := filepath.Join(dir, "bridge-nf-call-iptables")
	broken, good := filepath.Join(dir, "broken"), filepath.Join(dir, "value")
	if err := os.Mkdir(broken, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(good, []byte("0\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(broken, sysctl); err != nil {
		t.Fatal(err)
	}
	h := newRecHealth()
	ctl := startController(t, fake.NewClientset(), ControllerConfig{EndpointDir: t.TempDir(), Dataplane: NewFakeDataplane(),
		MinSyncInterval: 5 * time.Millisecond, ResyncInterval: 20 * time.Millisecond, Health: h,
		BridgeNetfilter: true, BridgeNetfilterSysctl: sysctl})
	testutil.Eventually(t, "bridge-netfilter reason", func() bool {
		r, _ := h.get(CondBridgeNetfilter)
		return strings.Contains(r, sysctl) && strings.Contains(r, "not be policed")
	})
	if errs := ctl.Errors(); len(errs) != 1 {
		t.Fatalf("Errors() = %v, want the bridge-netfilter failure", errs)
	}

	tmp := sysctl + ".new"
	if err := os.Symlink(good, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, sysctl); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "bridge-netfilter met after repair", func() bool { return h.met(CondBridgeNetfilter) })
	if b, _ := os.ReadFile(good); strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("sysctl not switched on: %q", b)
	}
	if errs := ctl.Errors(); len(errs) != 0 {
		t.Fatalf("Errors() = %v after repair", errs)
	}
}

// countingRecorder counts Eventf calls and passes them on.
type countingRecorder struct {
	mu   sync.Mutex
	n    int
	next EventRecorder
}

func (r *countingRecorder) Eventf(obj runtime.Object, typ, reason, msg string, args ...any) {
	r.mu.Lock()
	r.n++
	r.mu.Unlock()
	r.next.Eventf(obj, typ, reason, msg, args...)
}

func (r *countingRecorder) count() int { r.mu.Lock(); defer r.mu.Unlock(); return r.n }

// A NetworkPolicy the renderer cannot handle gets one Warning Event (through
// the real event broadcaster into the API), not one per sync; a changed
// error gets a new one.
func TestPolicyNotEnforceableEvent(t *testing.T) {
	c := rulestest.NewCluster()
	client := fake.NewClientset()
	ctx := context.Background()
	for _, n := range c.Namespaces {
		client.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{})
	}
	for _, p := range c.Pods {
		client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	}
	dir := t.TempDir()
	for _, ep := range c.Endpoints(1) {
		if err := endpoint.Write(dir, ep); err != nil {
			t.Fatal(err)
		}
	}
	bad := rulestest.NP("x", "bad", nil, rulestest.TIn)
	bad.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rulestest.In(nil, rulestest.PPort("ICMP", rulestest.Num(1)))}
	client.NetworkingV1().NetworkPolicies("x").Create(ctx, bad, metav1.CreateOptions{})
	rec, stop := NewEventRecorder(client, "node1")
	defer stop()
	cr := &countingRecorder{next: rec}
	fdp := NewFakeDataplane()
	startController(t, client, ControllerConfig{NodeName: "node1", EndpointDir: dir, Dataplane: fdp,
		MinSyncInterval: 5 * time.Millisecond, ResyncInterval: 10 * time.Millisecond, Events: cr})
	var ev string
	testutil.Eventually(t, "Warning Event on x/bad", func() bool {
		l, _ := client.CoreV1().Events("x").List(ctx, metav1.ListOptions{})
		for _, e := range l.Items {
			if e.InvolvedObject.Kind == "NetworkPolicy" && e.InvolvedObject.Name == "bad" && e.Type == "Warning" &&
				e.Reason == ReasonUnenforceable {
				ev = e.Message
				return true
			}
		}
		return false
	})
	if !strings.Contains(ev, "ICMP") || !strings.Contains(ev, "node1") || !strings.Contains(ev, "fail closed") {
		t.Errorf("event message %q", ev)
	}
	_, before := fdp.Last()
	testutil.Eventually(t, "ten more syncs", func() bool { _, n := fdp.Last(); return n >= before+10 })
	if n := cr.count(); n != 1 {
		t.Fatalf("%d Events for one unchanged error over 10+ syncs", n)
	}

	bad.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rulestest.In(nil, rulestest.PPort("GRE", rulestest.Num(1)))}
	client.NetworkingV1().NetworkPolicies("x").Update(ctx, bad, metav1.UpdateOptions{})
	testutil.Eventually(t, "a second Event for the changed error", func() bool { return cr.count() == 2 })
}
