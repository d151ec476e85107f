package policy

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/nodeapi"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/policy/rules/rulestest"
)

// weftctl's trace is computed from the State the controller last applied:
// before any sync there is nothing to trace; then each flow is walked on
// the end(s) local to this node, and a policy change shows in the verdict
// and in the rules that matched.
func TestTraceFlows(t *testing.T) {
	c := rulestest.NewCluster()
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, ns := range c.Namespaces {
		_, _ = client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
	}
	for _, p := range c.Pods {
		_, _ = client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	}
	dir := t.TempDir()
	for _, e := range c.Endpoints(1) {
		if err := endpoint.Write(dir, e); err != nil {
			t.Fatal(err)
		}
	}
	ctl, err := NewController(informers.NewSharedInformerFactory(client, 0), ControllerConfig{NodeName: "node1", EndpointDir: dir,
		Dataplane: NewFakeDataplane(), ResyncInterval: time.Hour, MinSyncInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.TraceFlows(nil); err != ErrNotSynced {
		t.Fatalf("trace before the first sync: %v, want ErrNotSynced", err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	defer func() { cancel(); <-done }()
	xa, xb, ya, yb, yc := rulestest.Ref{NS: "x", Pod: "a"}, rulestest.Ref{NS: "x", Pod: "b"}, rulestest.Ref{NS: "y", Pod: "a"},
		rulestest.Ref{NS: "y", Pod: "b"}, rulestest.Ref{NS: "y", Pod: "c"}
	flow := func(from, to rulestest.Ref) nodeapi.Flow {
		return nodeapi.Flow{Src: rulestest.IPOf(from).String(), Dst: rulestest.IPOf(to).String(), Proto: "tcp", Port: 80}
	}
	flows := []nodeapi.Flow{flow(yb, xa), flow(xa, yb), flow(ya, xb), flow(yb, yc)}
	trace := func() []nodeapi.Trace {
		tr, err := ctl.TraceFlows(flows)
		if err != nil {
			t.Fatal(err)
		}
		return tr
	}
	testutil.Eventually(t, "first sync", func() bool { _, err := ctl.TraceFlows(nil); return err == nil })
	locals := []string{"destination", "source", "both", "none"}
	for i, tr := range trace() {
		if tr.Local != locals[i] || !tr.Allowed {
			t.Errorf("no policy: %+v, want local %s and allowed", tr, locals[i])
		}
	}
	if _, err := client.NetworkingV1().NetworkPolicies("x").Create(ctx, rulestest.NP("x", "deny", nil, rulestest.TIn), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "deny in x traced", func() bool { return !trace()[0].Allowed })
	got := trace()
	for i, want := range []bool{false, true, false, true} {
		if got[i].Allowed != want {
			t.Errorf("deny ingress in x: %+v, want allowed=%v", got[i], want)
		}
	}
	last := got[0].Hits[len(got[0].Hits)-1]
	if got[0].Verdict != "drop" || last.Rule == "" {
		t.Errorf("denied flow's trace names no dropping rule: %+v", got[0])
	}
	if got[3].Verdict != "pass" || len(got[3].Hits) != 0 {
		t.Errorf("a flow with no local end is not traced here: %+v", got[3])
	}
	if live := ctl.PodLive(string(c.Pods[0].UID)); !live || ctl.PodLive("no-such-uid") {
		t.Errorf("PodLive: %v for a pod of the informer", live)
	}
}
