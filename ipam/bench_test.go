package ipam

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// Benchmarks: ADD and DEL of weft-ipam in-process (as the weft plugin calls
// it), weft-ipam exec'd, and the reference host-local exec'd, each on a
// node that already holds `existing` pods (host-local's costs grow with
// them). Run with: go test -run '^$' -bench . ./ipam/
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
		prefill(b, add)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := add(fmt.Sprint("b-", i)); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, bin := range benchBinaries(b) {
		b.Run(filepath.Base(bin)+"-exec", func(b *testing.B) {
			conf := benchConf(b)
			add := func(id string) error { _, err := runPlugin(b, bin, "ADD", id, "eth0", "", conf); return err }
			prefill(b, add)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := add(fmt.Sprint("b-", i)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
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
