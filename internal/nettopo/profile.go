package nettopo

import (
	"os"
	"runtime/pprof"
	"testing"
)

// ProfileEnv names the file a benchmark writes the CPU profile of its
// userspace data path rounds to (the relays run in the benchmark process).
const ProfileEnv = "WEFT_BENCH_CPUPROFILE"

// CPUProfile starts a CPU profile into $WEFT_BENCH_CPUPROFILE when it is
// set and returns its stop (a no-op otherwise). Each call truncates the
// file, so a benchmark that profiles every round keeps the last one.
func CPUProfile(b testing.TB) func() {
	b.Helper()
	path := os.Getenv(ProfileEnv)
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		_ = f.Close()
		b.Fatal(err)
	}
	return func() { pprof.StopCPUProfile(); _ = f.Close() }
}
