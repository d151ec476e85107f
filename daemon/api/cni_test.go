package api

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/endpoint"
)

// The plugin's reports over the real local socket become the CNI latency
// histogram and the error counter by verb and code; codes outside the
// spec's are "other", and nonsense is refused.
func TestCNIMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewCNIMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	routes := NewRoutes()
	if err := m.Register(routes); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "weftd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeUnix(ctx, sock, routes, slog.New(slog.DiscardHandler)) }()
	defer func() { cancel(); <-done }()
	reports := []endpoint.CNIReport{{Op: "ADD", Seconds: 0.02}, {Op: "ADD", Seconds: 0.5, Code: 11}, {Op: "DEL", Seconds: 0.01},
		{Op: "DEL", Seconds: 0.01, Code: 77}}
	for _, r := range reports {
		var err error
		for range 50 { // the listener is being created
			if err = endpoint.Report(ctx, sock, r, time.Second); err == nil {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := endpoint.Report(ctx, sock, endpoint.CNIReport{Op: "CHECK", Seconds: 1}, time.Second); err == nil {
		t.Error("a report of another verb was accepted")
	}
	errs := map[string]float64{}
	mfs, _ := reg.Gather()
	hists := 0
	for _, mf := range mfs {
		for _, s := range mf.GetMetric() {
			l := map[string]string{}
			for _, p := range s.GetLabel() {
				l[p.GetName()] = p.GetValue()
			}
			switch mf.GetName() {
			case "weft_cni_request_duration_seconds":
				hists++
				if h := s.GetHistogram(); h.GetSampleCount() != 2 {
					t.Errorf("%v: %d samples, want 2", l, h.GetSampleCount())
				}
			case "weft_cni_errors_total":
				errs[l["op"]+"/"+l["code"]] = s.GetCounter().GetValue()
			}
		}
	}
	if hists != 2 || len(errs) != 2 || errs["ADD/11"] != 1 || errs["DEL/other"] != 1 {
		t.Errorf("latency series %d (want ADD and DEL), errors %v (want ADD/11 and DEL/other once)", hists, errs)
	}
}
