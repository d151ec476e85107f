package shaping_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/loop"
	"github.com/weftnet/weft/shaping"
)

// Two pods with rate 10 and ceil 50 under a 50 Mbit/s node ceiling: one
// alone borrows to ≥ 40; both at once each keep ≥ 9.
func TestBorrowing(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.EgressCeiling, cfg.IngressCeiling, cfg.PodCeil = 50_000_000, 50_000_000, 50_000_000
	n := newNode(t, cfg)
	a := n.newPod("a", map[string]string{shaping.AnnotationEgress: "10M"})
	b := n.newPod("b", map[string]string{shaping.AnnotationEgress: "10M"})
	n.mustAdd(a)
	n.mustAdd(b)
	alone, _ := n.iperf(a, 5201, 5, false)
	t.Logf("a alone: %.2f Mbit/s", alone)
	if alone < 40 {
		t.Errorf("a alone: %.2f Mbit/s, want ≥ 40 (borrowing up to ceil 50)", alone)
	}
	var wg sync.WaitGroup
	got := make([]float64, 2)
	errs := make([]error, 2)
	for i, p := range []*pod{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got[i], _, errs[i] = n.runIperf(p, 5210+i, 5, false)
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
	n := newNode(t, cfg)
	p := n.newPod("busy", map[string]string{shaping.AnnotationEgress: "10M", shaping.AnnotationIngress: "10M"})
	n.mustAdd(p)
	addr := n.echoServer()
	bulk := make(chan error, 1)
	go func() { _, _, err := n.runIperf(p, 5201, 7, false); bulk <- err }()
	time.Sleep(2 * time.Second) // the bulk flow fills its queue
	rtts, err := requestResponse(p.ns, addr, 4*time.Second)
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

// echoServer answers every byte with one byte, in the node netns.
func (n *node) echoServer() string {
	var ln net.Listener
	n.in(func() error {
		var err error
		ln, err = net.Listen("tcp", n.gateway+":7007")
		return err
	})
	n.t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				b := make([]byte, 1)
				for {
					if _, err := c.Read(b); err != nil {
						return
					}
					if _, err := c.Write(b); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

// requestResponse sends one byte and waits for the answer, again and
// again for d, from inside podNS; it returns the round trips.
func requestResponse(podNS ns.NetNS, addr string, d time.Duration) ([]time.Duration, error) {
	var c net.Conn
	if err := podNS.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	}); err != nil {
		return nil, err
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetNoDelay(true)
	}
	var rtts []time.Duration
	b := []byte{'x'}
	for end := time.Now().Add(d); time.Now().Before(end); {
		start := time.Now()
		_ = c.SetDeadline(start.Add(2 * time.Second))
		if _, err := c.Write(b); err != nil {
			return rtts, err
		}
		if _, err := c.Read(b); err != nil {
			return rtts, err
		}
		rtts = append(rtts, time.Since(start))
		time.Sleep(5 * time.Millisecond)
	}
	return rtts, nil
}

// classRate reads the rate of the pod's class on dev from the kernel.
func (n *node) classRate(dev, veth string) string {
	n.t.Helper()
	c := n.rec.Applied().Trees[map[string]shaping.Direction{shaping.DeviceEgress: shaping.Egress, shaping.DeviceIngress: shaping.Ingress}[dev]].Class(veth)
	if c == nil {
		return ""
	}
	for _, line := range strings.Split(n.tc("class", "show", "dev", dev), "\n") {
		if strings.Contains(line, fmt.Sprintf("class htb 1:%x ", c.Minor)) {
			f := strings.Fields(line)
			for i := range f {
				if f[i] == "rate" && i+1 < len(f) {
					return f[i+1]
				}
			}
		}
	}
	return ""
}

// A live annotation change (weftd's pod watch marks the loop dirty; here
// the fake pod source does) reaches the kernel within 5 s and the
// measured rate follows; an invalid one keeps the old class and emits one
// Warning Event; a class deleted behind weftd's back is back after a
// resync.
func TestLiveChange(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.PodCeil = 10_000_000
	n := newNode(t, cfg)
	p := n.newPod("live", map[string]string{shaping.AnnotationEgress: "10M"})
	n.mustAdd(p)
	lp := loop.New(loop.Config{Sync: n.rec.Sync, Resync: time.Hour, BackoffMin: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = lp.Run(ctx) }()

	n.pods.set("live", map[string]string{shaping.AnnotationEgress: "20M"})
	changed := time.Now()
	lp.MarkDirty()
	for n.classRate(shaping.DeviceEgress, p.veth) != "20Mbit" {
		if time.Since(changed) > 5*time.Second {
			t.Fatalf("class rate %q 5 s after the change to 20M", n.classRate(shaping.DeviceEgress, p.veth))
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("20M in the kernel %v after the change", time.Since(changed).Round(time.Millisecond))
	avg, _ := n.iperf(p, 5201, 5, false)
	t.Logf("after the change: %.2f Mbit/s", avg)
	if !within(avg, 20, 0.10) {
		t.Errorf("after the change to 20M: %.2f Mbit/s, want 20 ±10%%", avg)
	}

	n.pods.set("live", map[string]string{shaping.AnnotationEgress: "fast"})
	lp.MarkDirty()
	time.Sleep(300 * time.Millisecond)
	lp.MarkDirty()
	time.Sleep(300 * time.Millisecond)
	if r := n.classRate(shaping.DeviceEgress, p.veth); r != "20Mbit" {
		t.Errorf("after an invalid change the class is %q, want the old 20Mbit", r)
	}
	ev := n.events.all()
	if len(ev) != 1 || !strings.Contains(ev[0], shaping.ReasonInvalid) || !strings.Contains(ev[0], shaping.AnnotationEgress+`="fast"`) {
		t.Errorf("events %q: want one %s naming the annotation", ev, shaping.ReasonInvalid)
	}

	// Drift: delete the class behind weftd's back; a resync repairs it.
	dev := shaping.DeviceEgress
	minor := n.rec.Applied().Trees[shaping.Egress].Class(p.veth).Minor
	n.tc("filter", "del", "dev", dev, "parent", "1:", "prio", "10", "handle", fmt.Sprintf("800::%x", minor), "u32")
	n.tc("class", "del", "dev", dev, "classid", fmt.Sprintf("1:%x", minor))
	if err := n.rec.Sync(ctx, true); err != nil {
		t.Fatal(err)
	}
	if r := n.classRate(dev, p.veth); r != "20Mbit" {
		t.Errorf("after drift and resync the class is %q", r)
	}
	if out := n.tc("filter", "show", "dev", dev); !strings.Contains(out, fmt.Sprintf("flowid 1:%x", minor)) {
		t.Errorf("address filter not repaired:\n%s", out)
	}
}

// ADD of a pod asking for more than the node ceiling, or for an
// unparsable rate, fails with a CNI error naming the annotation and
// leaves nothing behind: no veth, no record, no class.
func TestBadAnnotationFailsADD(t *testing.T) {
	cfg := shaping.DefaultConfig()
	cfg.EgressCeiling = 100_000_000
	n := newNode(t, cfg)
	for _, ann := range []map[string]string{
		{shaping.AnnotationEgress: "200M"},
		{shaping.AnnotationIngress: "ten"},
		{shaping.AnnotationIngress: "0"},
	} {
		p := n.newPod("bad", ann)
		err := n.add(p)
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
	recs, _ := filepath.Glob(filepath.Join(n.endpoint, "*"))
	if len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
	if out := n.tc("class", "show", "dev", shaping.DeviceEgress); strings.Contains(out, "parent 1:1 ") {
		t.Errorf("classes left:\n%s", out)
	}
	var links []string
	n.in(func() error {
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
