// Package image checks the container image that the repository's
// Dockerfile builds: it builds it (hack/image.sh, stand-in base images where
// none can be pulled) and runs it under Docker, the way the DaemonSet in
// manifests/weft.yaml uses it. Run it with `make test-image`, which gives it
// a private dockerd and names it in WEFT_DOCKER_HOST; without that it has
// no daemon to talk to.
package image

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/internal/testutil"
)

// refCNIVersion is the version of the reference plugins the Dockerfile
// installs (and the Makefile's ref-plugins).
const refCNIVersion = "v1.9.1"

func imageName() string {
	if s := os.Getenv("IMAGE"); s != "" {
		return s
	}
	return "ghcr.io/weftnet/weft:dev"
}

// docker runs the Docker CLI against DOCKER_HOST and returns its stdout.
func docker(ctx context.Context, args ...string) (string, error) {
	cli := "/usr/bin/docker" // Debian's docker.io client, same API as its daemon
	if _, err := os.Stat(cli); err != nil {
		cli = "docker"
	}
	cmd := exec.CommandContext(ctx, cli, args...)
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+os.Getenv("WEFT_DOCKER_HOST"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.String(), fmt.Errorf("docker %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
	}
	return out.String(), nil
}

// TestImage builds the image and checks what the DaemonSet relies on.
func TestImage(t *testing.T) {
	testutil.RequireRoot(t)
	if os.Getenv("WEFT_DOCKER_HOST") == "" {
		t.Skip("no Docker daemon given in WEFT_DOCKER_HOST: run `make test-image` (it starts a private dockerd for this test)")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Minute)
	defer cancel()
	img := imageName()
	build(t, ctx, img)
	reportSize(t, ctx, img)
	bins := extractBinaries(t, ctx, img)
	t.Run("static binaries with their versions", func(t *testing.T) { checkBinaries(t, ctx, img, bins) })
	t.Run("install-cni into a mounted directory", func(t *testing.T) { checkInstallCNI(t, ctx, img, bins) })
	for _, mode := range []string{"legacy", "nft"} {
		t.Run("iptables and ipset "+mode, func(t *testing.T) { checkIPTables(t, ctx, img, mode) })
	}
}

// build runs hack/image.sh build against the daemon this test was given
// (WEFT_DOCKER_HOST), so what is checked is what the current sources build.
func build(t *testing.T, ctx context.Context, img string) {
	root := testutil.RepoRoot()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "hack", "image.sh"), "build")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "IMAGE="+img)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "image: ") {
			t.Log(l)
		}
	}
	if err != nil {
		t.Fatalf("hack/image.sh build: %v\n%s", err, tail(string(out), 40))
	}
	t.Logf("built %s in %s", img, time.Since(start).Round(time.Second))
}

func reportSize(t *testing.T, ctx context.Context, img string) {
	out, err := docker(ctx, "image", "inspect", "-f", "{{.Size}} {{.Id}}", img)
	if err != nil {
		t.Fatal(err)
	}
	var size int64
	var id string
	if _, err := fmt.Sscan(out, &size, &id); err != nil {
		t.Fatalf("image inspect %q: %v", out, err)
	}
	t.Logf("IMAGE SIZE %s: %.1f MB (%d bytes, %s)", img, float64(size)/1e6, size, id)
	if size < 10e6 {
		t.Fatalf("image %s is only %d bytes: no Debian base and binaries in it", img, size)
	}
}

// extractBinaries copies /usr/local/bin out of the image into a temp dir.
func extractBinaries(t *testing.T, ctx context.Context, img string) string {
	out, err := docker(ctx, "create", "--network", "none", img)
	if err != nil {
		t.Fatal(err)
	}
	id := strings.TrimSpace(out)
	defer func() {
		if _, err := docker(context.WithoutCancel(ctx), "rm", "-f", id); err != nil {
			t.Error(err)
		}
	}()
	dir := t.TempDir()
	if _, err := docker(ctx, "cp", id+":/usr/local/bin", dir); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "bin")
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// imageBinaries: weftd and every plugin install-cni copies.
func imageBinaries() []string { return append([]string{"weftd"}, install.Binaries()...) }

// checkBinaries: each binary is a static ELF built by Go with cgo off and
// -trimpath, from Weft's module or the reference plugins at refCNIVersion,
// and reports its version when run inside the image.
func checkBinaries(t *testing.T, ctx context.Context, img, bins string) {
	for _, name := range imageBinaries() {
		path := filepath.Join(bins, name)
		if why := notStatic(path); why != "" {
			t.Errorf("%s: %s", name, why)
			continue
		}
		bi, err := buildinfo.ReadFile(path)
		if err != nil {
			t.Errorf("%s: build info: %v", name, err)
			continue
		}
		settings := map[string]string{}
		for _, s := range bi.Settings {
			settings[s.Key] = s.Value
		}
		if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
			t.Errorf("%s: built with CGO_ENABLED=%q -trimpath=%q, want 0 and true", name, settings["CGO_ENABLED"], settings["-trimpath"])
		}
		wantMod, wantVer := "github.com/weftnet/weft", ""
		if !slices.Contains(install.Own(), name) && name != "weftd" {
			wantMod, wantVer = "github.com/containernetworking/plugins", refCNIVersion
		}
		if bi.Main.Path != wantMod || (wantVer != "" && bi.Main.Version != wantVer) {
			t.Errorf("%s: module %s@%s, want %s@%s", name, bi.Main.Path, bi.Main.Version, wantMod, wantVer)
		}
		t.Logf("%s: %s@%s %s", name, bi.Main.Path, bi.Main.Version, bi.GoVersion)
		if name == "weftd" {
			checkWeftdVersion(t, ctx, img, bi)
		} else {
			checkPluginVersion(t, ctx, img, name)
		}
	}
}

// notStatic says why the ELF file at path is not a static executable.
func notStatic(path string) string {
	f, err := elf.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "dynamically linked (has a PT_INTERP program header)"
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		return fmt.Sprintf("needs shared libraries %v", libs)
	}
	return ""
}

func checkWeftdVersion(t *testing.T, ctx context.Context, img string, bi *buildinfo.BuildInfo) {
	out, err := docker(ctx, "run", "--rm", "--network", "none", img, "version")
	if err != nil {
		t.Errorf("weftd version: %v", err)
		return
	}
	want := fmt.Sprintf("weftd %s", bi.Main.Version)
	got := strings.TrimSpace(out)
	if !strings.HasPrefix(got, want+" ") || !strings.Contains(got, " "+bi.GoVersion+" linux/"+runtime.GOARCH+" CGO_ENABLED=0") {
		t.Errorf("weftd version in the image says %q, want %q ... %s linux/%s CGO_ENABLED=0", got, want, bi.GoVersion, runtime.GOARCH)
	}
	t.Logf("weftd version: %s", got)
}

// checkPluginVersion runs the plugin's CNI VERSION command in the image.
func checkPluginVersion(t *testing.T, ctx context.Context, img, name string) {
	out, err := docker(ctx, "run", "--rm", "--network", "none", "-e", "CNI_COMMAND=VERSION",
		"--entrypoint", "/usr/local/bin/"+name, img)
	if err != nil {
		t.Errorf("%s VERSION: %v", name, err)
		return
	}
	var v struct {
		CNIVersion        string   `json:"cniVersion"`
		SupportedVersions []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || !slices.Contains(v.SupportedVersions, "1.0.0") {
		t.Errorf("%s VERSION: %q (%v), want supportedVersions with 1.0.0", name, out, err)
	}
}
