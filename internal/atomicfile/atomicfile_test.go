package atomicfile

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Write creates and replaces a file with the given content and mode and
// leaves no temporary file; a failed write leaves the target as it was.
func TestWrite(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "10-weft.conflist")
	for _, c := range []struct {
		data string
		perm os.FileMode
	}{{"one", 0o644}, {"two, longer", 0o755}, {"", 0o600}} {
		if err := Write(path, []byte(c.data), c.perm); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != c.data {
			t.Fatalf("content %q, %v; want %q", got, err, c.data)
		}
		if st, _ := os.Stat(path); st.Mode().Perm() != c.perm {
			t.Fatalf("mode %v, want %v", st.Mode().Perm(), c.perm)
		}
		ents, _ := os.ReadDir(dir)
		if len(ents) != 1 {
			t.Fatalf("directory holds %d files, want only the target", len(ents))
		}
	}
	// The target is a directory: the rename fails, the old content stays
	// and the temporary file is removed.
	sub := filepath.Join(dir, "sub")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(sub, "x"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Write(sub, []byte("x"), 0o644); err == nil || !strings.Contains(err.Error(), sub) {
		t.Fatalf("write over a non-empty directory: %v", err)
	}
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), TempPrefix) {
			t.Fatalf("temporary file %s left", e.Name())
		}
	}
	if err := Write(filepath.Join(dir, "missing", "f"), nil, 0o644); err == nil {
		t.Fatal("write into a missing directory succeeded")
	}
}
