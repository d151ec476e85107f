package shaping_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/loop"
	"github.com/weftnet/weft/shaping"
	st "github.com/weftnet/weft/shaping/shapingtest"
)

// A re-ADD of a shaped pod whose veth lost its redirects (as a veth
// recreated under the same name by the retry of an ADD that died after
// writing its record) puts them back: Admit reads back in full when it
// already knows the veth, although the desired state did not change.
func TestReADDRestoresRedirects(t *testing.T) {
	n := st.NewNode(t, shaping.DefaultConfig())
	p := n.NewPod("readd", map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"})
	n.MustAdd(p)
	redirects := func() string { // without clsact, tc fails: no redirects
		var out []byte
		for _, hook := range []string{"ingress", "egress"} {
			o, _ := exec.Command("nsenter", "--net="+n.NS.Path(), "tc", "filter", "show", "dev", p.Veth, hook).CombinedOutput()
			out = append(out, o...)
		}
		return string(out)
	}
	both := func(out string) bool { // each hook's listing may show the other's redirect too
		return strings.Contains(out, "device "+shaping.DeviceEgress) && strings.Contains(out, "device "+shaping.DeviceIngress)
	}
	if out := redirects(); !both(out) {
		t.Fatalf("after ADD, %s has not both redirects:\n%s", p.Veth, out)
	}
	n.TC("qdisc", "del", "dev", p.Veth, "clsact")
	if out := redirects(); strings.Contains(out, "mirred") {
		t.Fatalf("clsact deleted but redirects remain:\n%s", out)
	}
	n.MustAdd(p) // the same container again
	if out := redirects(); !both(out) {
		t.Errorf("after the re-ADD, %s has not both redirects back:\n%s", p.Veth, out)
	}
	n.Del(p)
}

// A pod annotated 10M in both directions, through libcni: each direction
// measures 10 Mbit/s ±10% over 6 s, the first second at most 12 Mbit
// (the runtime's 4294967295-bit burst is bounded by maxBurst), also after
// a resync; DEL removes its classes and filters.
func TestPodRateBothDirections(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.PodCeil = 10_000_000 // no borrowing: the pod gets exactly its rate
	n := st.NewNode(t, cfg)
	p := n.NewPod("ten", map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"})
	n.MustAdd(p)
	// A resync (full Apply) with both of the veth's hooks redirected
	// changes nothing: clsact's hooks share u32's tables, so each hook's
	// listing shows the other's redirect, which must be left alone.
	k := &shaping.Netlink{NetNS: n.NS.Path()}
	defer k.Close()
	if c, err := k.Apply(context.Background(), n.Rec.Applied(), true); err != nil || c != 0 {
		t.Errorf("full Apply of the applied state: %d changes, %v", c, err)
	}
	for _, rev := range []bool{false, true} {
		avg, per := n.Iperf(p, map[bool]int{false: 5201, true: 5202}[rev], 6, rev)
		dir := map[bool]string{false: "egress", true: "ingress"}[rev]
		t.Logf("%s: %.2f Mbit/s, per second %v", dir, avg, per)
		if !st.Within(avg, 10, 0.10) {
			t.Errorf("%s: %.2f Mbit/s, want 10 ±10%%\n%s%s", dir, avg, n.TC("-s", "qdisc", "show", "dev", shaping.DeviceEgress), n.TC("-s", "class", "show", "dev", shaping.DeviceIngress))
		}
		if len(per) == 0 || per[0] > 12 {
			t.Errorf("%s: first second %v Mbit, want ≤ 12", dir, per)
		}
	}
	n.Del(p)
	for _, dev := range []string{shaping.DeviceEgress, shaping.DeviceIngress} {
		if out := n.TC("class", "show", "dev", dev); strings.Contains(out, "parent 1:1 ") {
			t.Errorf("after DEL, %s still has pod classes:\n%s", dev, out)
		}
		if out := n.TC("filter", "show", "dev", dev); strings.Contains(out, "flowid") {
			t.Errorf("after DEL, %s still has address filters:\n%s", dev, out)
		}
	}
}

// A dual-stack pod annotated 10M: its IPv6 traffic is classified into its
// classes too (u32 filters on the IPv6 addresses, prio FilterPrio6), in
// both directions, and so is its IPv4 traffic; a full Apply of the same
// state changes nothing (the IPv6 filters read back equal); DEL removes
// the IPv6 filters.
func TestIPv6PodShaped(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.PodCeil = 10_000_000
	n := st.NewDualStackNode(t, cfg)
	p := n.NewPod("six", map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"})
	n.MustAdd(p)
	for _, dev := range []string{shaping.DeviceEgress, shaping.DeviceIngress} {
		if out := n.TC("filter", "show", "dev", dev); !strings.Contains(out, "protocol ipv6 pref 11 u32") || !strings.Contains(out, "flowid") {
			t.Errorf("%s has no IPv6 address filter:\n%s", dev, out)
		}
	}
	k := &shaping.Netlink{NetNS: n.NS.Path()}
	defer k.Close()
	if c, err := k.Apply(context.Background(), n.Rec.Applied(), true); err != nil || c != 0 {
		t.Errorf("full Apply of the applied state: %d changes, %v", c, err)
	}
	for i, m := range []struct {
		addr string
		rev  bool
	}{{n.Gateway6, false}, {n.Gateway6, true}, {n.Gateway, false}} {
		avg, _, err := n.RunIperfAt(p, m.addr, 5201+i, 5, m.rev)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("to %s reverse=%v: %.2f Mbit/s", m.addr, m.rev, avg)
		if !st.Within(avg, 10, 0.10) {
			t.Errorf("to %s reverse=%v: %.2f Mbit/s, want 10 ±10%%\n%s%s%s", m.addr, m.rev, avg, n.TC("-s", "filter", "show", "dev", shaping.DeviceEgress),
				n.TC("-s", "class", "show", "dev", shaping.DeviceEgress), n.TC("-s", "filter", "show", "dev", p.Veth, "ingress"))
		}
	}
	n.Del(p)
	for _, dev := range []string{shaping.DeviceEgress, shaping.DeviceIngress} {
		if out := n.TC("filter", "show", "dev", dev); strings.Contains(out, "flowid") {
			t.Errorf("after DEL, %s still has address filters:\n%s", dev, out)
		}
	}
}

// Two pods with rate 10 and ceil 50 under a 50 Mbit/s node ceiling: one
// alone borrows to ≥ 40; both at once each keep ≥ 9.
func TestBorrowing(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.EgressCeiling, cfg.IngressCeiling, cfg.PodCeil = 50_000_000, 50_000_000, 50_000_000
	n := st.NewNode(t, cfg)
	a := n.NewPod("a", map[string]string{shaping.AnnotationEgress: "10M"})
	b := n.NewPod("b", map[string]string{shaping.AnnotationEgress: "10M"})
	n.MustAdd(a)
	n.MustAdd(b)
	// What the kernel holds reads back equal to what was written (rates,
	// bursts, the quantum set on every class, leaves, filters, redirects):
	// a full Apply of the same state changes nothing.
	k := &shaping.Netlink{NetNS: n.NS.Path()}
	defer k.Close()
	if c, err := k.Apply(context.Background(), n.Rec.Applied(), true); err != nil || c != 0 {
		t.Fatalf("full Apply of the applied state: %d changes, %v", c, err)
	}
	alone, _ := n.Iperf(a, 5201, 5, false)
	t.Logf("a alone: %.2f Mbit/s", alone)
	if alone < 40 {
		t.Errorf("a alone: %.2f Mbit/s, want ≥ 40 (borrowing up to ceil 50)", alone)
	}
	var wg sync.WaitGroup
	got := make([]float64, 2)
	errs := make([]error, 2)
	for i, p := range []*st.Pod{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _, errs[i] = n.RunIperf(p, 5210+i, 5, false)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	t.Logf("both: a %.2f b %.2f Mbit/s", got[0], got[1])
	if got[0] < 9 || got[1] < 9 || got[0]+got[1] > 50*1.05 {
		t.Errorf("both sending: a %.2f b %.2f Mbit/s, want each ≥ 9 and together ≤ the 50 Mbit/s ceiling", got[0], got[1])
	}
}

// A pod saturating its own 10 Mbit/s with a bulk flow keeps a 1-byte
// request/response flow's p99 round trip within 20 ms.
func TestLatencyUnderLoad(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.PodCeil = 10_000_000
	n := st.NewNode(t, cfg)
	p := n.NewPod("busy", map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"})
	n.MustAdd(p)
	addr := n.EchoServer()
	bulk := make(chan error, 1)
	go func() { _, _, err := n.RunIperf(p, 5201, 7, false); bulk <- err }()
	time.Sleep(2 * time.Second) // the bulk flow fills its queue
	rtts, err := st.RequestResponse(p.NS, addr, 4*time.Second)
	if berr := <-bulk; berr != nil {
		t.Fatal(berr)
	}
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rtts)
	p50, p99 := rtts[len(rtts)/2], rtts[len(rtts)*99/100]
	t.Logf("1-byte RR under load: %d round trips, p50 %v p99 %v", len(rtts), p50, p99)
	if p99 > 20*time.Millisecond {
		t.Errorf("p99 %v, want ≤ 20ms", p99)
	}
}

// A live annotation change (weftd's pod watch marks the loop dirty; here
// the fake pod source does) reaches the kernel within 5 s and the
// measured rate follows; an invalid one keeps the old class and emits one
// Warning Event; a class deleted behind weftd's back is back after a
// resync.
func TestLiveChange(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.PodCeil = 10_000_000
	n := st.NewNode(t, cfg)
	p := n.NewPod("live", map[string]string{shaping.AnnotationEgress: "10M"})
	n.MustAdd(p)
	lp := loop.New(loop.Config{Sync: n.Rec.Sync, Resync: time.Hour, BackoffMin: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = lp.Run(ctx) }()

	n.Pods.Set("live", map[string]string{shaping.AnnotationEgress: "20M"})
	changed := time.Now()
	lp.MarkDirty()
	for n.ClassRate(shaping.DeviceEgress, p.Veth) != "20Mbit" {
		if time.Since(changed) > 5*time.Second {
			t.Fatalf("class rate %q 5 s after the change to 20M", n.ClassRate(shaping.DeviceEgress, p.Veth))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("20M in the kernel %v after the change", time.Since(changed).Round(time.Millisecond))
	avg, _ := n.Iperf(p, 5201, 5, false)
	t.Logf("after the change: %.2f Mbit/s", avg)
	if !st.Within(avg, 20, 0.10) {
		t.Errorf("after the change to 20M: %.2f Mbit/s, want 20 ±10%%", avg)
	}

	n.Pods.Set("live", map[string]string{shaping.AnnotationEgress: "fast"})
	lp.MarkDirty()
	time.Sleep(300 * time.Millisecond)
	lp.MarkDirty()
	time.Sleep(300 * time.Millisecond)
	if r := n.ClassRate(shaping.DeviceEgress, p.Veth); r != "20Mbit" {
		t.Errorf("after an invalid change the class is %q, want the old 20Mbit", r)
	}
	ev := n.Events.All()
	if len(ev) != 1 || !strings.Contains(ev[0], shaping.ReasonInvalid) || !strings.Contains(ev[0], shaping.AnnotationEgress+`="fast"`) {
		t.Errorf("events %q: want one %s naming the annotation", ev, shaping.ReasonInvalid)
	}

	// Drift: delete the class behind weftd's back; a resync repairs it.
	dev := shaping.DeviceEgress
	minor := n.Rec.Applied().Trees[shaping.Egress].Class(p.Veth).Minor
	n.TC("filter", "del", "dev", dev, "parent", "1:", "prio", "10", "handle", fmt.Sprintf("800::%x", minor), "u32")
	n.TC("class", "del", "dev", dev, "classid", fmt.Sprintf("1:%x", minor))
	if err := n.Rec.Sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if r := n.ClassRate(dev, p.Veth); r != "20Mbit" {
		t.Errorf("after drift and resync the class is %q", r)
	}
	if out := n.TC("filter", "show", "dev", dev); !strings.Contains(out, fmt.Sprintf("flowid 1:%x", minor)) {
		t.Errorf("address filter not repaired:\n%s", out)
	}
}

// ADD of a pod asking for more than the node ceiling, or for an
// unparsable rate, fails with a CNI error naming the annotation and
// leaves nothing behind: no veth, no record, no class.
func TestBadAnnotationFailsADD(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.EgressCeiling = 100_000_000
	n := st.NewNode(t, cfg)
	for _, ann := range []map[string]string{
		{shaping.AnnotationEgress: "200M"},
		{shaping.AnnotationIngress: "ten"},
		{shaping.AnnotationIngress: "0"},
	} {
		p := n.NewPod("bad", ann)
		err := n.Add(p)
		var ce *types.Error
		if !errors.As(err, &ce) || ce.Code != types.ErrInvalidNetworkConfig {
			t.Fatalf("ADD %v: %v, want a CNI error code %d", ann, err, types.ErrInvalidNetworkConfig)
		}
		for k := range ann {
			if !strings.Contains(ce.Msg, k) {
				t.Errorf("ADD %v: %q does not name the annotation", ann, ce.Msg)
			}
		}
		t.Logf("ADD %v: %s", ann, ce.Msg)
	}
	recs, _ := filepath.Glob(filepath.Join(n.Endpoint, "*.json")) // not .adds/, the plugin's ADD locks
	if len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
	if out := n.TC("class", "show", "dev", shaping.DeviceEgress); strings.Contains(out, "parent 1:1 ") {
		t.Errorf("classes left:\n%s", out)
	}
	var links []string
	n.In(func() error {
		ents, err := os.ReadDir("/sys/class/net")
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), "wv") {
				links = append(links, e.Name())
			}
		}
		return err
	})
	if len(links) != 0 {
		t.Errorf("veths left: %v", links)
	}
}
