package ipam

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipam/store/disk"
)

// slotWithTrailer appends a valid "end" trailer (count, CRC-32C) to body.
func slotWithTrailer(body string, count int) []byte {
	sum := crc32.Checksum([]byte(body), crc32.MakeTable(crc32.Castagnoli))
	return []byte(fmt.Sprintf("%send %d %08x\n", body, count, sum))
}

// dirSnapshot returns every file of dir with its bytes.
func dirSnapshot(t testing.TB, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = b
	}
	return out
}

// TestUnknownStateFormatRefused models a rollback to this weft-ipam after a
// newer one wrote the store: every verb must fail with an I/O error naming
// the file and what it found, and leave the files byte for byte as they are,
// instead of starting empty and re-issuing addresses that pods hold.
func TestUnknownStateFormatRefused(t *testing.T) {
	cases := []struct {
		name, file string
		slot       []byte
		want       string
	}{
		{"newer header version", disk.Slot1,
			slotWithTrailer("weft-ipam 2 9\nboot b\nlast 0 10.30.0.2\n10.30.0.2 pod-a eth0\n", 1),
			"format version 2"},
		{"newer version, other trailer", disk.Slot1,
			[]byte("weft-ipam 3 9\n10.30.0.2 pod-a eth0 net=x\nsha256 00ff\n"), "format version 3"},
		{"unknown record under a valid checksum", disk.Slot1,
			slotWithTrailer("weft-ipam 1 9\nboot b\nlast 0 10.30.0.2\n10.30.0.2 pod-a eth0\nreserve 10.30.0.3 pod-b eth0\n", 1),
			`unknown record "reserve 10.30.0.3 pod-b eth0"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			conf, dir := diskConfig(t, "1.0.0", `"subnet":"10.30.0.0/24"`)
			p := New(disk.Opener{Options: disk.Options{BootID: "b"}})
			// An older generation this weft-ipam can read sits in the
			// other slot: falling back to it would lose pod-a's address.
			mustAdd(t, p, cmdArgs("pod-old", "eth0", conf))
			if err := os.WriteFile(filepath.Join(dir, tc.file), tc.slot, 0o644); err != nil {
				t.Fatal(err)
			}
			before := dirSnapshot(t, dir)
			path := filepath.Join(dir, tc.file)

			_, err := p.Add(context.Background(), cmdArgs("pod-new", "eth0", conf))
			wantCode(t, err, types.ErrIOFailure, path)
			wantCode(t, err, types.ErrIOFailure, tc.want)
			wantCode(t, p.Del(context.Background(), cmdArgs("pod-a", "eth0", conf)), types.ErrIOFailure, path)
			wantCode(t, p.Check(context.Background(), cmdArgs("pod-a", "eth0", conf)), types.ErrIOFailure, path)
			gc := withKey(t, conf, "cni.dev/valid-attachments", []any{})
			wantCode(t, p.GC(context.Background(), cmdArgs("", "", gc)), types.ErrIOFailure, path)

			after := dirSnapshot(t, dir)
			if len(after) != len(before) {
				t.Fatalf("directory changed: before %d files, after %v", len(before), keys(after))
			}
			for n, b := range before {
				if !bytes.Equal(after[n], b) {
					t.Errorf("%s changed:\nbefore %q\nafter  %q", n, b, after[n])
				}
			}
		})
	}
}

// withKey returns conf with one more top-level key.
func withKey(t testing.TB, conf []byte, key string, v any) []byte {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(conf, &m); err != nil {
		t.Fatal(err)
	}
	m[key] = v
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func keys(m map[string][]byte) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// TestUnknownStateFormatBinary: the exec'd weft-ipam prints code 5 with the
// file's name, as a runtime sees it.
func TestUnknownStateFormatBinary(t *testing.T) {
	bin := filepath.Join(testutil.BinDir(t), "weft-ipam")
	conf, dir := diskConfig(t, "1.0.0", `"subnet":"10.31.0.0/24"`)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	slot := slotWithTrailer("weft-ipam 2 4\n10.31.0.2 pod-a eth0\n", 1)
	if err := os.WriteFile(filepath.Join(dir, disk.Slot0), slot, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := runPlugin(t, bin, "ADD", "pod-b", "eth0", "", conf)
	wantPrintedCode(t, out, err, types.ErrIOFailure)
	if !strings.Contains(string(out), filepath.Join(dir, disk.Slot0)) || !strings.Contains(string(out), "version 2") {
		t.Errorf("error does not name the file and version: %s", out)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, disk.Slot0)); !bytes.Equal(b, slot) {
		t.Errorf("slot changed: %q", b)
	}
}
