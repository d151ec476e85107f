package policy

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/internal/endpoint"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// The plugin's wait (endpoint.WaitProgrammed) against the controller's
// handler: blocks until the record's pod is programmed, times out otherwise;
// the latency metric is recorded.
func TestProgrammedHandlerAndMetrics(t *testing.T) {
	c := rulestest.NewCluster()
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, n := range c.Namespaces {
		client.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{})
	}
	p := c.Pod(rulestest.Ref{NS: "x", Pod: "a"})
	p.CreationTimestamp = metav1.NewTime(time.Now())
	client.CoreV1().Pods("x").Create(ctx, p, metav1.CreateOptions{})
	reg := prometheus.NewRegistry()
	met, err := NewPrometheusMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	ctl, err := NewController(informers.NewSharedInformerFactory(client, 0), ControllerConfig{EndpointDir: dir,
		Dataplane: NewFakeDataplane(), MinSyncInterval: 10 * time.Millisecond, Metrics: met})
	if err != nil {
		t.Fatal(err)
	}
	go ctl.Run(ctx)
	routes := api.NewRoutes() // served as weftd serves it: the plugin's paths through the route table
	if err := RegisterLocalAPI(routes, ctl); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(routes)
	defer srv.Close()
	get := func(path string) (int, string) {
		resp, err := http.Get(srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := get(endpoint.ProgrammedPath + "wvxa?timeout=300ms"); code != http.StatusGatewayTimeout {
		t.Fatalf("no record yet: %d", code)
	}
	done := make(chan struct{})
	var code int
	go func() {
		defer close(done)
		code, _ = get(endpoint.ProgrammedPath + "wvxa?timeout=10s")
	}()
	time.Sleep(100 * time.Millisecond) // the request is waiting
	eps := c.Endpoints(1)
	if err := endpoint.Write(dir, eps[0]); err != nil {
		t.Fatal(err)
	}
	<-done
	if code != http.StatusOK {
		t.Fatalf("after the record: %d", code)
	}
	if code, _ := get(endpoint.ProgrammedPath + "a/b"); code != http.StatusBadRequest {
		t.Errorf("bad path: %d", code)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var count uint64
	for _, mf := range mfs {
		if mf.GetName() == "weft_policy_pod_programmed_seconds" {
			count = mf.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	if count != 1 {
		t.Errorf("pod-programmed latency observations = %d, want 1", count)
	}
	if got := routes.Paths(); !slices.Equal(got, []string{endpoint.ProgrammedPath, endpoint.StatusPath}) {
		t.Errorf("local API routes %q: the plugin's paths are not both served", got)
	}
}
