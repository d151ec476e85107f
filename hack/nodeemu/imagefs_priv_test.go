package nodeemu

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

// miniRootfs makes a tiny image root file system: the node's sh, cat,
// realpath and touch with the C library they need, a merged /usr, and
// /var/run -> /run as in Debian.
func miniRootfs(t *testing.T) string {
	t.Helper()
	r := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/x86_64-linux-gnu", "usr/lib64", "run", "tmp", "proc", "sys", "dev", "etc", "var"} {
		if err := os.MkdirAll(filepath.Join(r, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for link, to := range map[string]string{"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "var/run": "/run"} {
		if err := os.Symlink(to, filepath.Join(r, link)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"/usr/bin/sh", "/usr/bin/dash", "/usr/bin/cat", "/usr/bin/realpath", "/usr/bin/touch",
		"/usr/lib/x86_64-linux-gnu/libc.so.6", "/usr/lib64/ld-linux-x86-64.so.2"} {
		src, err := filepath.EvalSymlinks(f)
		if err != nil {
			t.Skipf("no %s on this node: %v", f, err)
		}
		data, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(r, f), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return r
}

// TestPrivilegedImageRootfs runs a container's command through
// rootfsCommand: it sees the image as / (read-only), its volumes at their
// paths (resolved through the image's /var/run symlink into its own
// /run), a volume missing on the node is skipped, and nothing of it is
// left mounted on the node.
func TestPrivilegedImageRootfs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (mount namespaces, chroot)")
	}
	root := miniRootfs(t)
	vol := t.TempDir()
	if err := os.WriteFile(filepath.Join(vol, "token"), []byte("tok"), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "xtables.lock")
	if err := os.WriteFile(file, []byte("lock"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The container mounts vol at a path through /var/run and file at its
	// own path; the node stands for both (mountPath == node path).
	secrets := filepath.Join("/var/run", "weft-imagefs-test-"+filepath.Base(vol))
	if err := os.Symlink(vol, secrets); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(secrets)
	c := &v1.Container{VolumeMounts: []v1.VolumeMount{{Name: "sa", MountPath: secrets}, {Name: "lock", MountPath: file},
		{Name: "mods", MountPath: "/nonexistent-weft-modules"}}}
	script := "cat " + secrets + "/token; echo; cat " + file + "; echo; realpath " + secrets + "; " +
		"touch /x 2>/dev/null && echo rootfs-writable || echo rootfs-read-only; touch /run/y /tmp/z && echo run-tmp-writable"
	cmd, err := rootfsCommand(root, c, []string{"sh", "-c", script})
	if err != nil {
		t.Fatal(err)
	}
	cmd.Env = withPath(nil)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	got := string(out)
	for _, want := range []string{"tok\n", "lock\n", "/run/" + filepath.Base(secrets) + "\n", "rootfs-read-only", "run-tmp-writable",
		"/nonexistent-weft-modules missing on the node, not mounted"} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "run", "y")); err == nil {
		t.Error("the container's /run is the image directory, not its own tmpfs")
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	if strings.Contains(string(mounts), root) {
		t.Errorf("mounts of the container left on the node:\n%s", mounts)
	}
}
