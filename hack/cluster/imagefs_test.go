package cluster

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

type entry struct {
	name, body, link string
	typ              byte
}

func tarOf(t *testing.T, es []entry) []byte {
	t.Helper()
	var b bytes.Buffer
	w := tar.NewWriter(&b)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.body)), Linkname: e.link}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			if _, err := w.Write([]byte(e.body)); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// savedArchive writes a `docker save`-shaped archive with the layers.
func savedArchive(t *testing.T, layers ...[]entry) string {
	t.Helper()
	var outer []entry
	var names []string
	for i, l := range layers {
		n := filepath.Join("layer"+string(rune('0'+i)), "layer.tar")
		names = append(names, n)
		outer = append(outer, entry{name: n, body: string(tarOf(t, l)), typ: tar.TypeReg})
	}
	m, err := json.Marshal([]savedImage{{Config: "0123456789abcdef0123.json", RepoTags: []string{"ghcr.io/weftnet/weft:dev"}, Layers: names}})
	if err != nil {
		t.Fatal(err)
	}
	outer = append(outer, entry{name: "manifest.json", body: string(m), typ: tar.TypeReg})
	file := filepath.Join(t.TempDir(), "image.tar")
	if err := os.WriteFile(file, tarOf(t, outer), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}

func testCluster(t *testing.T) *Cluster {
	c, err := New(Options{Root: t.TempDir(), StateDir: t.TempDir(), Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestImageRootfs: layers are applied in order with the OCI whiteouts
// (a deleted file, an opaque directory), symlinks stay links, and the
// repositories come from the tags.
func TestImageRootfs(t *testing.T) {
	file := savedArchive(t,
		[]entry{{name: "a/", typ: tar.TypeDir}, {name: "a/x", body: "x", typ: tar.TypeReg}, {name: "a/y", body: "y", typ: tar.TypeReg},
			{name: "d/", typ: tar.TypeDir}, {name: "d/old", body: "old", typ: tar.TypeReg},
			{name: "var/", typ: tar.TypeDir}, {name: "var/run", link: "/run", typ: tar.TypeSymlink}, {name: "run/", typ: tar.TypeDir}},
		[]entry{{name: "a/.wh.x", typ: tar.TypeReg}, {name: "d/.wh..wh..opq", typ: tar.TypeReg}, {name: "d/new", body: "new", typ: tar.TypeReg},
			{name: "usr/local/bin/weftd", body: "weftd", typ: tar.TypeReg}, {name: "usr/local/bin/w", link: "usr/local/bin/weftd", typ: tar.TypeLink}},
	)
	c := testCluster(t)
	dir, repos, err := c.imageRootfs(file)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(repos, []string{"ghcr.io/weftnet/weft"}) || filepath.Base(dir) != "0123456789ab" {
		t.Errorf("repos %v dir %s", repos, dir)
	}
	var got []string
	_ = filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			body, _ := os.ReadFile(p)
			if fi.Mode()&os.ModeSymlink != 0 {
				l, _ := os.Readlink(p)
				body = []byte("->" + l)
			}
			got = append(got, rel+"="+string(body))
		}
		return nil
	})
	want := []string{"a/y=y", "d/new=new", "usr/local/bin/w=weftd", "usr/local/bin/weftd=weftd", "var/run=->/run"}
	if !slices.Equal(got, want) {
		t.Errorf("rootfs files:\n got %v\nwant %v", got, want)
	}
	// Unpacked once: a second call reuses it.
	if err := os.WriteFile(filepath.Join(dir, "marker"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if again, _, err := c.imageRootfs(file); err != nil || again != dir {
		t.Fatalf("second unpack: %s %v", again, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "marker")); err != nil {
		t.Errorf("second call unpacked again: %v", err)
	}
}

// TestImageRootfsRefusesSymlinkEscape: an entry below an image symlink to
// an absolute path would land on the node's own file system.
func TestImageRootfsRefusesSymlinkEscape(t *testing.T) {
	outside := t.TempDir()
	file := savedArchive(t,
		[]entry{{name: "var/", typ: tar.TypeDir}, {name: "var/run", link: outside, typ: tar.TypeSymlink}},
		[]entry{{name: "var/run/evil", body: "x", typ: tar.TypeReg}},
	)
	_, _, err := testCluster(t).imageRootfs(file)
	if err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("unpack through a symlink: %v, want refused", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "evil")); err == nil {
		t.Error("a file was written outside the rootfs")
	}
}
