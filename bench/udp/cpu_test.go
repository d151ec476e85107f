package udp

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// cpuSample is the CPU time, in clock ticks' seconds, of everything that
// moves a benchmark path's packets on this one kernel, for both nodes at
// once: the benchmark process (the relays run in it: user and system
// time of their goroutines, system calls included), its waited-for
// children (the iperf3 client and server: with tick accounting, the
// softirq work the kernel does in a task's context, which is where veth,
// bridge, VXLAN and the TCP stack run, is charged to that task's system
// time) and the ksoftirqd threads (softirq work deferred out of task
// context). Softirq work that interrupts an unrelated task or an idle CPU
// is not seen: the machine is shared, so a global /proc/stat figure would
// count the other sessions' work too; it is reported beside it as an
// upper bound only.
type cpuSample struct {
	self, children, ksoftirqd float64
	globalSoftirq             float64
}

const clockTicks = 100 // USER_HZ on Linux

func sampleCPU(b testing.TB) cpuSample {
	b.Helper()
	var s cpuSample
	var ru syscall.Rusage
	for _, who := range []struct {
		w   int
		dst *float64
	}{{syscall.RUSAGE_SELF, &s.self}, {syscall.RUSAGE_CHILDREN, &s.children}} {
		if err := syscall.Getrusage(who.w, &ru); err != nil {
			b.Fatal(err)
		}
		*who.dst = tv(ru.Utime) + tv(ru.Stime)
	}
	s.ksoftirqd = ksoftirqdSeconds(b)
	s.globalSoftirq = globalSoftirq(b)
	return s
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// ksoftirqdSeconds sums utime+stime of the ksoftirqd/N threads.
func ksoftirqdSeconds(b testing.TB) float64 {
	paths, _ := filepath.Glob("/proc/[0-9]*/comm")
	total := 0.0
	for _, p := range paths {
		comm, err := os.ReadFile(p)
		if err != nil || !strings.HasPrefix(string(comm), "ksoftirqd/") {
			continue
		}
		stat, err := os.ReadFile(filepath.Join(filepath.Dir(p), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ... : utime and stime are fields 14 and 15,
		// the 12th and 13th after the closing parenthesis.
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) < 13 {
			b.Fatalf("%s: %q", p, stat)
		}
		u, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		total += (u + st) / clockTicks
	}
	return total
}

// globalSoftirq is the softirq column of /proc/stat's cpu line, seconds.
func globalSoftirq(b testing.TB) float64 {
	raw, err := os.ReadFile("/proc/stat")
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(raw), "\n", 2)[0])
	if len(f) < 8 {
		b.Fatalf("/proc/stat: %q", f)
	}
	v, _ := strconv.ParseFloat(f[7], 64)
	return v / clockTicks
}

// cpuCost is what a path's 1-stream run cost: CPU seconds of the path's
// tasks (cpuSample), the part spent in the benchmark process (the
// relay), and the machine-wide softirq (upper bound), each per GB moved.
type cpuCost struct{ PerGB, RelayPerGB, GlobalSoftirqPerGB float64 }

func costOf(before, after cpuSample, gbit float64, seconds int) cpuCost {
	gb := gbit * float64(seconds) / 8
	if gb <= 0 {
		return cpuCost{}
	}
	tasks := (after.self - before.self) + (after.children - before.children) + (after.ksoftirqd - before.ksoftirqd)
	return cpuCost{PerGB: tasks / gb, RelayPerGB: (after.self - before.self) / gb,
		GlobalSoftirqPerGB: (after.globalSoftirq - before.globalSoftirq) / gb}
}
