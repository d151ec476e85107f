// Package cni benchmarks the weft plugin (with weft-ipam in-process)
// against the reference bridge + host-local plugins (v1.9.1), both driven
// through libcni in the same run, from the same kind of node netns, into
// freshly created pod netns.
package cni

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/testutil"
)

const (
	seqPods  = 40 // sequential ADDs then DELs per implementation and round
	concPods = 20 // ADDs started at once
	rounds   = 3  // fresh node netns per round; seqPods pods each
	// concurrent batches per round and implementation
	concRounds = 3
)

// execIPAM is a symlink to weft-ipam under another name.
const execIPAM = "weft-ipam-exec"

// aliasDir returns a directory holding execIPAM -> weft-ipam.
func aliasDir(b *testing.B, binDir string) string {
	d := b.TempDir()
	if err := os.Symlink(filepath.Join(binDir, "weft-ipam"), filepath.Join(d, execIPAM)); err != nil {
		b.Fatal(err)
	}
	return d
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)[:n]
}

// impl is one plugin pair under test.
type impl struct {
	name string
	conf func(bridge, dataDir string) map[string]any
}

var impls = []impl{
	{"ref", func(br, dd string) map[string]any {
		return map[string]any{"type": "bridge", "bridge": br, "isGateway": true, "isDefaultGateway": true,
			"hairpinMode": true, "ipam": map[string]any{"type": "host-local", "dataDir": dd,
				"ranges": [][]map[string]string{{{"subnet": "10.78.0.0/16"}}}}}
	}},
	// weft with weft-ipam exec'd like any IPAM plugin (type name aliased
	// so the in-process path is not taken): shows what in-process saves.
	{"weft-exec", func(br, dd string) map[string]any {
		return map[string]any{"type": "weft", "bridge": br, "isGateway": true, "isDefaultGateway": true,
			"hairpinMode": true, "ipam": map[string]any{"type": execIPAM, "dataDir": dd,
				"ranges": [][]map[string]string{{{"subnet": "10.78.0.0/16"}}}}}
	}},
	{"weft", func(br, dd string) map[string]any {
		return map[string]any{"type": "weft", "bridge": br, "isGateway": true, "isDefaultGateway": true,
			"hairpinMode": true, "ipam": map[string]any{"type": "weft-ipam", "dataDir": dd,
				"ranges": [][]map[string]string{{{"subnet": "10.78.0.0/16"}}}}}
	}},
}

// samples collects latencies per implementation and phase.
type samples map[string][]time.Duration

func (s samples) add(key string, d time.Duration) { s[key] = append(s[key], d) }

func pct(ds []time.Duration, p float64) float64 {
	if len(ds) == 0 {
		return 0
	}
	c := slices.Clone(ds)
	slices.Sort(c)
	i := int(p*float64(len(c)-1) + 0.5)
	return float64(c[i].Microseconds()) / 1000
}

// runner drives one implementation from its own node netns.
type runner struct {
	b     *testing.B
	node  ns.NetNS
	cni   *libcni.CNIConfig
	list  *libcni.NetworkConfigList
	label string
}

func newRunner(b *testing.B, im impl, paths []string) *runner {
	b.Helper()
	conf := im.conf("wb"+randHex(8), b.TempDir())
	raw, _ := json.Marshal(map[string]any{"cniVersion": "1.0.0", "name": "bench-" + im.name + "-" + randHex(6),
		"plugins": []any{conf}})
	list, err := libcni.ConfListFromBytes(raw)
	if err != nil {
		b.Fatal(err)
	}
	return &runner{b: b, node: testutil.NewNS(b), cni: libcni.NewCNIConfigWithCacheDir(paths, b.TempDir(), nil),
		list: list, label: im.name}
}

func rtFor(p ns.NetNS) *libcni.RuntimeConf {
	id := randHex(64)
	return &libcni.RuntimeConf{ContainerID: id, NetNS: p.Path(), IfName: "eth0", Args: [][2]string{
		{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "bench"}, {"K8S_POD_NAME", "p" + id[:8]},
		{"K8S_POD_INFRA_CONTAINER_ID", id}, {"K8S_POD_UID", randHex(32)}}}
}

// timed runs one libcni call inside the node netns and returns its latency.
func (r *runner) timed(fn func(context.Context) error) time.Duration {
	var d time.Duration
	err := r.node.Do(func(ns.NetNS) error {
		t0 := time.Now()
		err := fn(context.Background())
		d = time.Since(t0)
		return err
	})
	if err != nil {
		r.b.Fatalf("%s: %v", r.label, err)
	}
	return d
}

func (r *runner) add(rt *libcni.RuntimeConf) time.Duration {
	return r.timed(func(ctx context.Context) error { _, err := r.cni.AddNetworkList(ctx, r.list, rt); return err })
}

func (r *runner) del(rt *libcni.RuntimeConf) time.Duration {
	return r.timed(func(ctx context.Context) error { return r.cni.DelNetworkList(ctx, r.list, rt) })
}

// newPods creates n pod netns and their runtime configs.
func newPods(b *testing.B, n int) []*libcni.RuntimeConf {
	rts := make([]*libcni.RuntimeConf, n)
	for i := range rts {
		rts[i] = rtFor(testutil.NewNS(b))
	}
	return rts
}

// inTurn calls fn for every runner, the order flipping with i, so both
// implementations see the same background load.
func inTurn(rs []*runner, i int, fn func(r *runner, k int)) {
	for k := range rs {
		if i%2 == 1 {
			k = len(rs) - 1 - k
		}
		fn(rs[k], k)
	}
}

// sequential: ADD seqPods pods one after another, then DEL them; the
// implementations take turns pod by pod. DELs are also kept per round
// (key "<impl>/del/r<round>"): rounds differ more than the pods in one.
func sequential(b *testing.B, rs []*runner, s samples, round int) {
	pods := make([][]*libcni.RuntimeConf, len(rs))
	for k := range rs {
		pods[k] = newPods(b, seqPods)
	}
	for i := range seqPods {
		inTurn(rs, i, func(r *runner, k int) { s.add(r.label+"/add", r.add(pods[k][i])) })
	}
	for i := range seqPods {
		inTurn(rs, i, func(r *runner, k int) {
			d := r.del(pods[k][i])
			s.add(r.label+"/del", d)
			s.add(fmt.Sprintf("%s/del/r%d", r.label, round), d)
		})
	}
}

// concurrent: concPods ADDs at once; records each ADD's latency and the
// wall time of the batch, then deletes them.
func (r *runner) concurrent(b *testing.B, s samples) {
	rts := newPods(b, concPods)
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	t0 := time.Now()
	for _, rt := range rts {
		wg.Go(func() {
			d := r.add(rt)
			mu.Lock()
			s.add(r.label+"/cadd", d)
			mu.Unlock()
		})
	}
	wg.Wait()
	s.add(r.label+"/cwall", time.Since(t0))
	for _, rt := range rts {
		r.del(rt)
	}
}

func BenchmarkCNI(b *testing.B) {
	testutil.RequireRoot(b)
	bin := testutil.BinDir(b)
	paths := []string{bin, testutil.RefPluginDir(b), aliasDir(b, bin)}
	for range b.N {
		s := samples{}
		for round := range rounds {
			rs := make([]*runner, len(impls))
			for k, im := range impls {
				rs[k] = newRunner(b, im, paths)
			}
			sequential(b, rs, s, round)
			for c := range concRounds {
				inTurn(rs, round+c, func(r *runner, _ int) { r.concurrent(b, s) })
			}
		}
		report(b, s)
	}
}

func report(b *testing.B, s samples) {
	m := func(k string, p float64) float64 { return pct(s[k], p) }
	for _, im := range []string{"ref", "weft-exec", "weft"} {
		b.ReportMetric(m(im+"/add", 0.5), im+"-add-p50-ms")
		b.ReportMetric(m(im+"/add", 0.95), im+"-add-p95-ms")
		b.ReportMetric(m(im+"/del", 0.5), im+"-del-p50-ms")
		b.ReportMetric(m(im+"/del", 0.95), im+"-del-p95-ms")
		b.ReportMetric(m(im+"/cadd", 0.5), im+"-conc20-add-p50-ms")
		b.ReportMetric(m(im+"/cwall", 0.5), im+"-conc20-wall-ms")
	}
	ratio := func(k string) float64 { return m("weft/"+k, 0.5) / m("ref/"+k, 0.5) }
	b.ReportMetric(ratio("add"), "add-p50-ratio")
	b.ReportMetric(ratio("del"), "del-p50-ratio")
	b.ReportMetric(ratio("cwall"), "conc20-wall-ratio")
	b.Logf("%-9s %9s %9s %9s %9s %12s %12s (ms; %d seq pods x %d rounds, %d concurrent x %d batches)",
		"impl", "add-p50", "add-p95", "del-p50", "del-p95", "c20-add-p50", "c20-wall", seqPods, rounds, concPods, rounds*concRounds)
	for _, im := range []string{"ref", "weft-exec", "weft"} {
		b.Logf("%-9s %9.2f %9.2f %9.2f %9.2f %12.2f %12.2f", im, m(im+"/add", .5), m(im+"/add", .95),
			m(im+"/del", .5), m(im+"/del", .95), m(im+"/cadd", .5), m(im+"/cwall", .5))
	}
	b.Logf("%s", fmt.Sprintf("weft/ref: ADD p50 %.2f, DEL p50 %.2f, 20-concurrent wall %.2f",
		ratio("add"), ratio("del"), ratio("cwall")))
	b.Logf("%s", fmt.Sprintf("weft-exec/ref: ADD p50 %.2f, DEL p50 %.2f (weft-ipam exec'd instead of in-process)",
		m("weft-exec/add", .5)/m("ref/add", .5), m("weft-exec/del", .5)/m("ref/del", .5)))
	reportRounds(b, m)
}

// reportRounds reports the DEL median of each round and its weft/ref
// ratio; the target (<= 1.0) must hold in every round, not only overall.
func reportRounds(b *testing.B, m func(string, float64) float64) {
	worst := 0.0
	for round := range rounds {
		w, r := m(fmt.Sprintf("weft/del/r%d", round), .5), m(fmt.Sprintf("ref/del/r%d", round), .5)
		b.ReportMetric(w, fmt.Sprintf("weft-del-p50-r%d-ms", round))
		b.ReportMetric(r, fmt.Sprintf("ref-del-p50-r%d-ms", round))
		b.ReportMetric(w/r, fmt.Sprintf("del-p50-ratio-r%d", round))
		worst = max(worst, w/r)
		b.Logf("round %d: DEL p50 weft %.2f ms, reference %.2f ms, weft/ref %.2f (%d pods each)", round, w, r, w/r, seqPods)
	}
	b.ReportMetric(worst, "del-p50-ratio-worst-round")
}
