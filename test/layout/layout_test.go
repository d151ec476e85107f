// Package layout checks the repository's layout rules that no compiler
// checks: every Go package (both modules, test-only packages too) opens
// with a package comment that says what it owns.
package layout

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/testutil"
)

// minWords is how short a package comment may be and still say what the
// package owns ("Package subnet leases this node's pod subnet.").
const minWords = 6

// TestEveryPackageSaysWhatItOwns: each directory with Go files has, in one
// of them, a doc comment "Package <name> ..." (or "Command <name> ..." for
// a main package) of at least minWords words.
func TestEveryPackageSaysWhatItOwns(t *testing.T) {
	root := testutil.RepoRoot()
	dirs := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && (strings.HasPrefix(d.Name(), ".") || d.Name() == "testdata" || d.Name() == "bin") {
			return filepath.SkipDir
		}
		if !d.IsDir() && strings.HasSuffix(p, ".go") {
			dirs[filepath.Dir(p)] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(dirs) < 20 {
		t.Fatalf("found only %d package directories under %s", len(dirs), root)
	}
	for dir := range dirs {
		rel, _ := filepath.Rel(root, dir)
		if why := packageDoc(dir); why != "" {
			t.Errorf("%s: %s", rel, why)
		}
	}
}

// packageDoc says what is wrong with dir's package comment ("" if nothing).
func packageDoc(dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err.Error()
	}
	fset := token.NewFileSet()
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, e.Name()), nil, parser.PackageClauseOnly|parser.ParseComments)
		if err != nil {
			return err.Error()
		}
		if f.Doc == nil {
			continue
		}
		doc := f.Doc.Text()
		name := strings.TrimSuffix(f.Name.Name, "_test")
		if name == "main" {
			if !strings.HasPrefix(doc, "Command ") {
				return e.Name() + ": a main package's comment starts \"Command <name>\""
			}
		} else if !strings.HasPrefix(doc, "Package "+name+" ") {
			return e.Name() + ": the comment starts \"Package " + name + "\""
		}
		if len(strings.Fields(doc)) < minWords {
			return e.Name() + ": the comment does not say what the package owns: " + strings.TrimSpace(doc)
		}
		return ""
	}
	return "no package comment in any file"
}
