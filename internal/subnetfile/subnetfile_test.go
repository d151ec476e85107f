package subnetfile

import (
	"errors"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "weft", "subnet.json")
	in := &File{Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.3.0/24"), MTU: 1450}
	if err := Write(path, in); err != nil {
		t.Fatal(err)
	}
	out, err := Read(path)
	if err != nil {
		t.Fatal(err)
	}
	if *out != *in {
		t.Fatalf("read %+v, wrote %+v", out, in)
	}
	if gw := out.Gateway(); gw != netip.MustParseAddr("10.244.3.1") {
		t.Fatalf("gateway %s", gw)
	}
	ents, _ := os.ReadDir(filepath.Dir(path))
	if len(ents) != 1 {
		t.Fatalf("temporary files left: %v", ents)
	}
}

func TestReadMissing(t *testing.T) {
	_, err := Read(filepath.Join(t.TempDir(), "nope.json"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("missing file: %v, want ErrNotExist", err)
	}
}

func TestValidate(t *testing.T) {
	p := netip.MustParsePrefix
	for _, tc := range []struct {
		f    File
		want string
	}{
		{File{}, "subnet: missing"},
		{File{Subnet: p("10.244.3.1/24")}, "host bits"},
		{File{Subnet: p("10.244.3.0/31")}, "too small"},
		{File{Network: p("10.244.0.0/16"), Subnet: p("10.245.3.0/24")}, "not inside"},
		{File{Network: p("10.244.0.0/24"), Subnet: p("10.244.0.0/16")}, "not inside"},
		{File{Subnet: p("10.244.3.0/24"), MTU: 100}, "mtu"},
	} {
		err := tc.f.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want error containing %q", tc.f, err, tc.want)
		}
		if err := Write(filepath.Join(t.TempDir(), "s.json"), &tc.f); err == nil {
			t.Errorf("%+v: Write accepted an invalid file", tc.f)
		}
	}
	path := filepath.Join(t.TempDir(), "bad.json")
	os.WriteFile(path, []byte(`{"subnet": "10.244.3.0/24", "mtu": "x"}`), 0o644)
	if _, err := Read(path); err == nil {
		t.Fatal("Read accepted a malformed file")
	}
}
