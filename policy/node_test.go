package policy

import (
	"context"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"

	"github.com/weftnet/weft/policy/rules"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// TestNodeController runs the production wiring against a throwaway node
// namespace: a pod's record appears, the controller programs it into that
// namespace's kernel, a policy shows up in the kernel, Uninstall removes
// everything of ours.
func TestNodeController(t *testing.T) {
	node := testutil.NewNS(t)
	c := rulestest.NewCluster()
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, n := range c.Namespaces {
		client.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{})
	}
	for _, p := range c.Pods {
		client.CoreV1().Pods(p.Namespace).Create(ctx, p, metav1.CreateOptions{})
	}
	dir := t.TempDir()
	factory := informers.NewSharedInformerFactory(client, 0)
	ctl, closeFn, err := NewNodeController(ctx, factory, NodeOptions{NodeName: "node1", NetNS: node.Path(), EndpointDir: dir,
		ResyncInterval: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		closeFn()
		if err := Uninstall(context.Background(), node.Path()); err != nil {
			t.Error(err)
		}
	})
	ep := c.Endpoints(1)[0]
	if err := endpoint.Write(dir, ep); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	if err := ctl.WaitProgrammed(wctx, ep.HostVeth); err != nil {
		t.Fatal(err)
	}
	mode, err := iptables.Detect(ctx, node.Path())
	if err != nil {
		t.Fatal(err)
	}
	run := iptables.Runner{Mode: mode, NetNS: node.Path()}
	save, err := run.Save(ctx, "filter")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(save, "-A "+rules.ToChain(ep.HostVeth)) || !strings.Contains(save, rules.JumpComment) {
		t.Fatalf("endpoint not programmed in the kernel:\n%s", save)
	}
	client.NetworkingV1().NetworkPolicies("x").Create(ctx, rulestest.WithIngress(rulestest.NP("x", "from-y", nil, rulestest.TIn),
		rulestest.In([]rulestest.From{{NamespaceSelector: rulestest.LS("ns", "y")}})), metav1.CreateOptions{})
	testutil.Eventually(t, "policy chain in the kernel", func() bool {
		s, _ := run.Save(ctx, "filter")
		return strings.Contains(s, "-A WEFT-PI-x.from-y")
	})
	// Drift: the policy chain's rules flushed by hand come back on resync.
	sh(t, node.Path(), "iptables-"+string(mode), "-F", "WEFT-PI-x.from-y")
	testutil.Eventually(t, "resync repairs the flushed chain", func() bool {
		s, _ := run.Save(ctx, "filter")
		return strings.Contains(s, "-A WEFT-PI-x.from-y")
	})
	cancel()
	<-done
	if err := Uninstall(context.Background(), node.Path()); err != nil {
		t.Fatal(err)
	}
	save, _ = run.Save(context.Background(), "filter")
	if strings.Contains(save, "WEFT-") {
		t.Fatalf("left behind after uninstall:\n%s", save)
	}
	done <- nil // for the cleanup
}
