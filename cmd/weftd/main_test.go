package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/testutil"
)

func TestInstallCNI(t *testing.T) {
	bin := testutil.BinDir(t)
	src, dst := t.TempDir(), t.TempDir()
	for _, p := range []string{"weft", "weft-ipam", "portmap", "bandwidth", "loopback"} {
		if err := os.WriteFile(filepath.Join(src, p), []byte("plugin "+p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 { // idempotent
		out, err := exec.Command(filepath.Join(bin, "weftd"), "install-cni", "--src-dir", src, "--cni-bin-dir", dst).CombinedOutput()
		if err != nil {
			t.Fatalf("install-cni: %v\n%s", err, out)
		}
	}
	for _, p := range []string{"weft", "weft-ipam", "portmap", "bandwidth", "loopback"} {
		if b, err := os.ReadFile(filepath.Join(dst, p)); err != nil || string(b) != "plugin "+p {
			t.Fatalf("%s: %q %v", p, b, err)
		}
	}
	_ = os.Remove(filepath.Join(src, "weft"))
	if out, err := exec.Command(filepath.Join(bin, "weftd"), "install-cni", "--src-dir", src, "--cni-bin-dir", dst).CombinedOutput(); err == nil {
		t.Fatalf("install-cni without weft in the image succeeded:\n%s", out)
	}
}

// TestConflistOnExit runs weftd against an API server that does not answer
// and stops it with SIGTERM: by default the conflist stays (pods keep being
// created across a restart); with --remove-cni-config-on-exit it goes.
func TestConflistOnExit(t *testing.T) {
	testutil.RequireRoot(t) // weftd opens netlink and probes iptables
	bin := testutil.BinDir(t)
	dir := t.TempDir()
	kc := deadKubeconfig(t, dir)
	for _, remove := range []bool{false, true} {
		conf := filepath.Join(dir, "net.d")
		_ = os.MkdirAll(conf, 0o755)
		if err := os.WriteFile(filepath.Join(conf, "10-weft.conflist"), []byte("{}"), 0o644); err != nil {
			t.Fatal(err)
		}
		args := []string{"--node-name", "n1", "--kubeconfig", kc, "--health-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--cni-conf-dir", conf,
			"--subnet-file", filepath.Join(dir, "subnet.json"),
			"--socket", filepath.Join(dir, "weftd.sock"), "--endpoint-dir", filepath.Join(dir, "endpoints")}
		if remove {
			args = append(args, "--remove-cni-config-on-exit")
		}
		cmd := exec.Command(filepath.Join(bin, "weftd"), args...)
		var out strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("weftd exited with %v:\n%s", err, out.String())
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Fatalf("weftd did not exit on SIGTERM:\n%s", out.String())
		}
		_, err := os.Stat(filepath.Join(conf, "10-weft.conflist"))
		if remove != os.IsNotExist(err) {
			t.Fatalf("remove=%v: conflist present=%v\n%s", remove, err == nil, out.String())
		}
	}
}

// deadKubeconfig writes a kubeconfig whose API server never answers.
func deadKubeconfig(t *testing.T, dir string) string {
	t.Helper()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: x, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: x, user: {token: t}}]
contexts: [{name: x, context: {cluster: x, user: x}}]
current-context: x
`), 0o600); err != nil {
		t.Fatal(err)
	}
	return kc
}

// A local socket that cannot be served stops weftd with an error at once,
// while the agent is still waiting for the API server (it used to be
// logged and weftd stayed up, looking healthy, with no pod able to start).
func TestSocketFailureStopsWeftd(t *testing.T) {
	testutil.RequireRoot(t) // weftd opens netlink and probes iptables
	bin := testutil.BinDir(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "not-a-dir")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(bin, "weftd"), "--node-name", "n1", "--kubeconfig", deadKubeconfig(t, dir),
		"--health-addr", "127.0.0.1:0", "--api-addr", "127.0.0.1:0", "--cni-conf-dir", filepath.Join(dir, "net.d"), "--subnet-file", filepath.Join(dir, "subnet.json"),
		"--socket", filepath.Join(file, "weftd.sock"), "--endpoint-dir", filepath.Join(dir, "endpoints"))
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(out.String(), "local API socket") {
			t.Fatalf("weftd exited with %v:\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("weftd still running 20s after its socket failed:\n%s", out.String())
	}
}
