package ipam

import (
	"fmt"
	"path/filepath"
	"sync"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// Benchmarks: ADD and DEL of weft-ipam in-process (as the weft plugin calls
// it), weft-ipam exec'd, and the reference host-local exec'd, each on a
// node that holds `existing` pods (both stores' costs grow with them; ADD
// benchmarks delete what they add, untimed, to stay at that size).
// Run with: go test -run '^$' -bench . ./ipam/
const existing = 100

func benchConf(b *testing.B) []byte {
	conf, _ := diskConfig(b, "1.0.0", `"subnet":"10.30.0.0/16"`)
	return conf
}

func prefill(b *testing.B, add func(id string) error) {
	for i := range existing {
		if err := add(fmt.Sprintf("existing-%d", i)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAdd(b *testing.B) {
	b.Run("weft-ipam-inprocess", func(b *testing.B) {
		conf := benchConf(b)
		add := func(id string) error { _, err := CmdAdd(cmdArgs(id, "eth0", conf)); return err }
		del := func(id string) error { return CmdDel(cmdArgs(id, "eth0", conf)) }
		prefill(b, add)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			addThenUndo(b, add, del, fmt.Sprint("b-", i))
		}
	})
	for _, bin := range benchBinaries(b) {
		b.Run(filepath.Base(bin)+"-exec", func(b *testing.B) {
			conf := benchConf(b)
			add := func(id string) error { _, err := runPlugin(b, bin, "ADD", id, "eth0", "", conf); return err }
			del := func(id string) error { _, err := runPlugin(b, bin, "DEL", id, "eth0", "", conf); return err }
			prefill(b, add)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				addThenUndo(b, add, del, fmt.Sprint("b-", i))
			}
		})
	}
}

// addThenUndo times add(id) and, untimed, deletes it again.
func addThenUndo(b *testing.B, add, del func(string) error, id string) {
	if err := add(id); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if err := del(id); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()
}

func BenchmarkDel(b *testing.B) {
	b.Run("weft-ipam-inprocess", func(b *testing.B) {
		conf := benchConf(b)
		add := func(id string) error { _, err := CmdAdd(cmdArgs(id, "eth0", conf)); return err }
		prefill(b, add)
		for i := 0; i < b.N; i++ {
			if err := add(fmt.Sprint("b-", i)); err != nil {
				b.Fatal(err)
			}
		}
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := CmdDel(cmdArgs(fmt.Sprint("b-", i), "eth0", conf)); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, bin := range benchBinaries(b) {
		b.Run(filepath.Base(bin)+"-exec", func(b *testing.B) {
			conf := benchConf(b)
			add := func(id string) error { _, err := runPlugin(b, bin, "ADD", id, "eth0", "", conf); return err }
			prefill(b, add)
			for i := 0; i < b.N; i++ {
				if err := add(fmt.Sprint("b-", i)); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := runPlugin(b, bin, "DEL", fmt.Sprint("b-", i), "eth0", "", conf); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func benchBinaries(b *testing.B) []string {
	return []string{
		filepath.Join(testutil.BinDir(b), "weft-ipam"),
		filepath.Join(testutil.RefPluginDir(b), "host-local"),
	}
}

// BenchmarkAddConcurrent20 measures bursts of 20 ADDs started at once, as
// when a node schedules many pods together; ns/op is per burst.
func BenchmarkAddConcurrent20(b *testing.B) {
	b.Run("weft-ipam-inprocess", func(b *testing.B) {
		conf := benchConf(b)
		prefill(b, func(id string) error { _, err := CmdAdd(cmdArgs(id, "eth0", conf)); return err })
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			burst(b, func(j int) error {
				_, err := CmdAdd(cmdArgs(fmt.Sprintf("b-%d-%d", i, j), "eth0", conf))
				return err
			})
			b.StopTimer()
			burst(b, func(j int) error { return CmdDel(cmdArgs(fmt.Sprintf("b-%d-%d", i, j), "eth0", conf)) })
			b.StartTimer()
		}
	})
	for _, bin := range benchBinaries(b) {
		b.Run(filepath.Base(bin)+"-exec", func(b *testing.B) {
			conf := benchConf(b)
			prefill(b, func(id string) error { _, err := runPlugin(b, bin, "ADD", id, "eth0", "", conf); return err })
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				burst(b, func(j int) error {
					_, err := runPlugin(b, bin, "ADD", fmt.Sprintf("b-%d-%d", i, j), "eth0", "", conf)
					return err
				})
				b.StopTimer()
				burst(b, func(j int) error {
					_, err := runPlugin(b, bin, "DEL", fmt.Sprintf("b-%d-%d", i, j), "eth0", "", conf)
					return err
				})
				b.StartTimer()
			}
		})
	}
}

func burst(b *testing.B, fn func(j int) error) {
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for j := range errs {
		wg.Go(func() { errs[j] = fn(j) })
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			b.Fatal(err)
		}
	}
}
