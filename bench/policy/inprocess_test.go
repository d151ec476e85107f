package policybench

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/weftnet/weft/policy"
	"github.com/weftnet/weft/policy/rules"
)

// nopKernel accepts everything and holds nothing.
type nopKernel struct{}

func (nopKernel) Restore(context.Context, string) error        { return nil }
func (nopKernel) Save(context.Context, string) (string, error) { return "", nil }
func (nopKernel) IPSetRestore(context.Context, string) error   { return nil }
func (nopKernel) IPSetSave(context.Context) (string, error)    { return "", nil }

// BenchmarkIncrementalInProcess: the CPU part of an incremental sync (render
// with the controller's caches + the Writer's diff), with a kernel that does
// nothing, so it is free of exec and machine load noise.
func BenchmarkIncrementalInProcess(b *testing.B) {
	in := workload()
	cfg := rules.Config{Bridge: benchBridge, AllowMark: 0x100000}
	rr := rules.NewRenderer(cfg)
	w := policy.NewWriter(nopKernel{}, nil)
	w.Apply(context.Background(), rr.Render(in), true)
	idx := 3*podsPerNS + 17
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pod := in.Pods[idx].DeepCopy()
		pod.ResourceVersion = fmt.Sprint(i + 2)
		pod.Labels["role"] = fmt.Sprintf("r%d", i%5)
		in.Pods[idx] = pod
		b.StopTimer()
		rand.Shuffle(len(in.Pods), func(i, j int) { in.Pods[i], in.Pods[j] = in.Pods[j], in.Pods[i] })
		idx = slices.Index(in.Pods, pod)
		b.StartTimer()
		w.Apply(context.Background(), rr.Render(in), false)
	}
}

// BenchmarkRenderFull: the render of a full sync (fresh caches).
func BenchmarkRenderFull(b *testing.B) {
	in := workload()
	cfg := rules.Config{Bridge: benchBridge, AllowMark: 0x100000}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rules.Render(cfg, in)
	}
}
