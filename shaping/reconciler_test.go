package shaping

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/endpoint/record"
)

type pods map[string]map[string]string

func (p pods) Pod(_, name string) (string, map[string]string, bool) {
	a, ok := p[name]
	return "", a, ok
}

type warnings []string

func (w *warnings) Warn(_, name, _, reason, msg string) { *w = append(*w, name+" "+reason+" "+msg) }

func writeRecord(t *testing.T, dir, veth, ip string, bw *record.Bandwidth) {
	t.Helper()
	if err := endpoint.Write(dir, endpoint.Endpoint{ContainerID: "c-" + veth, IfName: "eth0", PodNamespace: "ns",
		PodName: "pod-" + veth, HostVeth: veth, IPs: []string{ip + "/24"}, Bandwidth: bw}); err != nil {
		t.Fatal(err)
	}
}

// Records and live annotations become the desired state; an invalid live
// change keeps the previous limit and warns once; a record that goes takes
// its class with it; before weftd knows its configuration nothing is
// touched, and without a bandwidth section everything is removed.
func TestReconciler(t *testing.T) {
	dir := t.TempDir()
	k := &Fake{}
	live := pods{}
	var ev warnings
	svc := NewService(&Reconciler{EndpointDir: dir, Kernel: k, Pods: live, Events: &ev})
	r := svc.Rec
	ctx := context.Background()
	writeRecord(t, dir, "wva", "10.1.0.5", &record.Bandwidth{Egress: "10M", EgressBurst: 4294967295})
	if err := r.Sync(ctx, true); err != nil || k.Applies != 0 {
		t.Fatalf("before Configure: %d applies, %v (want none: adopt what is there)", k.Applies, err)
	}
	if on, err := svc.Configure([]byte(`{"podCeil":"50M"}`), 1450); err != nil || !on {
		t.Fatalf("Configure: %v %v", on, err)
	}
	if err := r.Sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	c := k.Applied.Trees[Egress].Class("wva")
	if c == nil || c.Rate != 1_250_000 || c.Ceil != 6_250_000 || c.Burst != DefaultMaxBurst || k.Applied.Trees[Ingress].Class("wva") != nil {
		t.Fatalf("from the record: %+v", c)
	}
	live["pod-wva"] = map[string]string{AnnotationEgress: "20M", AnnotationIngress: "5M"}
	_ = r.Sync(ctx, false)
	if c := k.Applied.Trees[Egress].Class("wva"); c.Rate != 2_500_000 || k.Applied.Trees[Ingress].Class("wva").Rate != 625_000 {
		t.Fatalf("live annotations not applied: %+v", k.Applied.Trees)
	}
	live["pod-wva"] = map[string]string{AnnotationEgress: "-1M"}
	_ = r.Sync(ctx, false)
	_ = r.Sync(ctx, false)
	if c := k.Applied.Trees[Egress].Class("wva"); c == nil || c.Rate != 2_500_000 {
		t.Fatalf("invalid live change replaced the old limit: %+v", c)
	}
	if len(ev) != 1 || !strings.Contains(ev[0], ReasonInvalid) || !strings.Contains(ev[0], AnnotationEgress) || !strings.Contains(ev[0], "previous limit stays") {
		t.Fatalf("events %q", ev)
	}
	// ADD-time rejection: the record's request above the ceiling.
	writeRecord(t, dir, "wvb", "10.1.0.6", &record.Bandwidth{Ingress: "20G"})
	var inv *InvalidError
	if err := r.Admit(ctx, "wvb"); !errors.As(err, &inv) || !strings.Contains(err.Error(), AnnotationIngress) {
		t.Fatalf("Admit over the ceiling: %v", err)
	}
	// DEL: the record goes and the plugin says so; a record removed
	// without a word (GC) goes at the next full sync.
	_ = endpoint.Remove(dir, "wvb")
	if err := r.Release("wvb"); err != nil {
		t.Fatal(err)
	}
	_ = endpoint.Remove(dir, "wva")
	_ = r.Sync(ctx, false)
	if len(k.Applied.Redirects) != 1 {
		t.Fatalf("an incremental sync re-read the records: %+v", k.Applied.Redirects)
	}
	_ = r.Sync(ctx, true)
	if len(k.Applied.Redirects) != 0 || len(k.Applied.Trees[Egress].Classes) != 0 {
		t.Fatalf("record gone, state left: %+v", k.Applied)
	}
	if on, _ := svc.Configure(nil, 1450); on {
		t.Fatal("still on without a section")
	}
	_ = r.Sync(ctx, true)
	if !k.Applied.Off {
		t.Fatal("shaping off did not remove the trees")
	}
}
