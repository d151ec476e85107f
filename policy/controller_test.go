package policy

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/endpoint"

	"github.com/weftnet/weft/policy/rules"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/policy/rules/rulestest"
)

type recMetrics struct {
	mu         sync.Mutex
	syncs      int
	errs       int
	programmed map[string]time.Duration
}

func (m *recMetrics) SyncDone(_, _ time.Duration, err error) {
	m.mu.Lock()
	m.syncs++
	m.mu.Unlock()
}
func (m *recMetrics) RenderErrors(n int) { m.mu.Lock(); m.errs = n; m.mu.Unlock() }
func (m *recMetrics) EndpointProgrammed(ns, name string, d time.Duration) {
	m.mu.Lock()
	m.programmed[ns+"/"+name] = d
	m.mu.Unlock()
}

func TestController(t *testing.T) {
	c := rulestest.NewCluster()
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, ns := range c.Namespaces {
		client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	}
	for _, p := range c.Pods {
		p.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Second))
		client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	}
	dir := t.TempDir()
	fdp := NewFakeDataplane()
	met := &recMetrics{programmed: map[string]time.Duration{}}
	factory := informers.NewSharedInformerFactory(client, 0)
	ctl, err := NewController(factory, ControllerConfig{NodeName: "node1", EndpointDir: dir, Dataplane: fdp,
		ResyncInterval: 200 * time.Millisecond, MinSyncInterval: 20 * time.Millisecond, Metrics: met})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()

	// A record appears (the plugin's ADD): the endpoint gets programmed.
	eps := c.Endpoints(1)
	if err := endpoint.Write(dir, eps[0]); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := ctl.WaitProgrammed(wctx, eps[0].HostVeth); err != nil {
		t.Fatal(err)
	}
	met.mu.Lock()
	if _, ok := met.programmed[eps[0].PodNamespace+"/"+eps[0].PodName]; !ok {
		t.Errorf("no programmed-latency metric: %v", met.programmed)
	}
	met.mu.Unlock()
	if ctl.Programmed(eps[1].HostVeth) {
		t.Fatal("endpoint without record reported programmed")
	}

	// A record for an unknown pod is written as fail-closed and never "programmed".
	ghost := endpoint.Endpoint{PodNamespace: "x", PodName: "ghost", HostVeth: "wvghost", IPs: []string{"10.244.1.99/24"}}
	endpoint.Write(dir, ghost)
	testutil.Eventually(t, "ghost endpoint rendered", func() bool {
		st, _ := fdp.Last()
		return st != nil && st.Chain(rules.ToChain("wvghost")) != nil
	})
	if ctl.Programmed("wvghost") {
		t.Fatal("unknown pod reported programmed")
	}

	// A policy arrives: x/a's ingress chain jumps to it.
	xa := eps[0]
	pol := rulestest.WithIngress(rulestest.NP("x", "from-y", nil, rulestest.TIn), rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y")}}))
	client.NetworkingV1().NetworkPolicies("x").Create(ctx, pol, metav1.CreateOptions{})
	testutil.Eventually(t, "policy in the ingress chain", func() bool {
		st, _ := fdp.Last()
		ch := st.Chain(rules.ToChain(xa.HostVeth))
		return ch != nil && strings.Contains(fmtRules(ch), "WEFT-PI-x.from-y")
	})
	// Namespace label change flows into the peer set.
	f := rulestest.Flow{Src: rulestest.Ref{NS: "z", Pod: "b"}, Dst: rulestest.Ref{NS: "x", Pod: "a"}, Proto: "tcp", Port: 80}
	lastAllowed := func() bool {
		st, _ := fdp.Last()
		ok, _ := rulestest.Allowed(map[int]*rules.State{1: st, 2: c.Render(2)}, f)
		return ok
	}
	if lastAllowed() {
		t.Fatal("z/b allowed before its namespace is labelled")
	}
	z, _ := client.CoreV1().Namespaces().Get(ctx, "z", metav1.GetOptions{})
	z.Labels["ns"] = "y"
	client.CoreV1().Namespaces().Update(ctx, z, metav1.UpdateOptions{})
	testutil.Eventually(t, "namespace relabel allows z/b", lastAllowed)

	// A broken policy: reported, x/a fails closed.
	bad := rulestest.NP("x", "bad", nil, rulestest.TIn)
	bad.Spec.Ingress = []networkingv1.NetworkPolicyIngressRule{rulestest.In(nil, rulestest.PPort("ICMP", rulestest.Num(1)))}
	client.NetworkingV1().NetworkPolicies("x").Create(ctx, bad, metav1.CreateOptions{})
	testutil.Eventually(t, "broken policy reported", func() bool { return len(ctl.Errors()) == 1 })
	testutil.Eventually(t, "fail closed", func() bool { return !lastAllowed() })
	met.mu.Lock()
	if met.errs != 1 {
		t.Errorf("render-error metric = %d", met.errs)
	}
	met.mu.Unlock()
	client.NetworkingV1().NetworkPolicies("x").Delete(ctx, "bad", metav1.DeleteOptions{})
	testutil.Eventually(t, "recovered", lastAllowed)

	// Periodic resync reads the kernel back.
	rb := fdp.ReadBacks()
	testutil.Eventually(t, "resync with read-back", func() bool { return fdp.ReadBacks() >= rb+2 })

	// Dataplane failures: nothing is reported programmed until it works.
	fdp.SetError(errors.New("restore failed"))
	endpoint.Write(dir, eps[1])
	short, scancel := context.WithTimeout(ctx, 300*time.Millisecond)
	if err := ctl.WaitProgrammed(short, eps[1].HostVeth); err == nil {
		t.Fatal("programmed while the dataplane fails")
	}
	scancel()
	fdp.SetError(nil)
	if err := ctl.WaitProgrammed(wctx, eps[1].HostVeth); err != nil {
		t.Fatalf("not programmed after recovery: %v", err)
	}

	// DEL removes the record: the endpoint is no longer programmed.
	endpoint.Remove(dir, eps[0].HostVeth)
	testutil.Eventually(t, "record removal", func() bool { return !ctl.Programmed(eps[0].HostVeth) })

	// An event storm coalesces: while one sync is in progress (held), 300
	// events arrive; once it finishes they are covered by one more sync.
	release := fdp.Hold()
	defer release()
	_, before := fdp.Last()
	ctl.loop.MarkDirty() // make sure a sync is underway and blocked
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 300; i++ {
		p := c.Pod(rulestest.Ref{NS: "y", Pod: "c"})
		p.Labels["gen"] = string(rune('a' + i%26))
		client.CoreV1().Pods("y").Update(ctx, p, metav1.UpdateOptions{})
	}
	testutil.Eventually(t, "storm seen by the informer", func() bool {
		p, err := factory.Core().V1().Pods().Lister().Pods("y").Get("c")
		return err == nil && p.Labels["gen"] == string(rune('a'+299%26))
	})
	release()
	testutil.Eventually(t, "the sync after the storm", func() bool {
		st, _ := fdp.Last()
		return st != nil && ctl.Programmed(eps[1].HostVeth)
	})
	time.Sleep(200 * time.Millisecond) // any further (resync) syncs would show here
	// Held sync + at most one coalesced follow-up + resyncs at 200ms.
	if _, after := fdp.Last(); after-before > 6 {
		t.Errorf("300 events caused %d syncs", after-before)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func fmtRules(c *rules.Chain) string {
	var b strings.Builder
	for _, r := range c.Rules {
		b.WriteString(r.Text() + "\n")
	}
	return b.String()
}
