package nodeemu

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
)

func chmodX(path string) error { return os.Chmod(path, 0o755) }

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestHostNetworkPodProcesses(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "installed")
	pidFile := filepath.Join(dir, "pid")
	termFile := filepath.Join(dir, "got-term")
	// The "image": a script standing in for weftd, found via the image bin dir.
	bin := filepath.Join(dir, "img")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(bin, "weftd"), `#!/bin/sh
echo "weftd on $NODE_NAME args $*"
echo $$ > `+pidFile+`
trap 'echo term > `+termFile+`; exit 0' TERM
while :; do sleep 0.05; done
`)
	if err := chmodX(filepath.Join(bin, "weftd")); err != nil {
		t.Fatal(err)
	}
	// weftd's health endpoint, failing until flipped.
	var healthy atomic.Bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/readyz" && healthy.Load() {
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	healthPort := ln.Addr().(*net.TCPAddr).Port

	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "weft-x1", UID: "uid-x1"},
		Spec: v1.PodSpec{
			NodeName: "node-1", HostNetwork: true, RestartPolicy: v1.RestartPolicyAlways,
			InitContainers: []v1.Container{
				// Fails once (no marker yet), then succeeds: init containers are retried.
				{Name: "install-cni", Command: []string{"sh", "-c", "test -e " + marker + ".try || { touch " + marker + ".try; exit 3; }; touch " + marker}},
			},
			Containers: []v1.Container{
				{Name: "weftd", Command: []string{"/usr/local/bin/weftd"}, Args: []string{"--node=$(NODE_NAME)"},
					Ports: []v1.ContainerPort{{Name: "health", ContainerPort: int32(healthPort)}},
					ReadinessProbe: &v1.Probe{PeriodSeconds: 1, ProbeHandler: v1.ProbeHandler{HTTPGet: &v1.HTTPGetAction{
						Host: "127.0.0.1", Path: "/readyz", Port: intstr.FromString("health")}}},
					Env: []v1.EnvVar{{Name: "NODE_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}}},
				{Name: "crasher", Command: []string{"sh", "-c", "echo crash; exit 7"}},
			},
		},
	}
	env := &envResolver{client: fake.NewClientset(), nodeName: "node-1", nodeIP: "172.18.0.2"}
	opts := ProcOptions{ImageBinDir: bin, LogDir: filepath.Join(dir, "logs"),
		BackoffBase: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond, StopGraceMax: 5 * time.Second}
	changed := make(chan struct{}, 1000)
	p := startPodProcs(context.Background(), pod, opts, env, quietLog(), func() {
		select {
		case changed <- struct{}{}:
		default:
		}
	})
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			p.Stop(0)
		}
	})

	waitFor(t, "weftd running and crasher restarted", 10*time.Second, func() bool {
		init, ctrs, _ := p.State()
		return init[0].Terminated != nil && init[0].Terminated.ExitCode == 0 && init[0].RestartCount == 1 &&
			ctrs[0].Running && ctrs[1].RestartCount >= 2
	})
	if _, ctrs, _ := p.State(); !ctrs[0].NotReady {
		t.Fatal("weftd counted ready while its readiness probe fails")
	}
	healthy.Store(true)
	waitFor(t, "weftd ready after its probe passes", 5*time.Second, func() bool {
		_, ctrs, _ := p.State()
		return ctrs[0].Running && !ctrs[0].NotReady
	})
	if _, err := os.Stat(marker); err != nil {
		t.Fatalf("init container did not run to completion: %v", err)
	}
	logB, err := os.ReadFile(filepath.Join(opts.LogDir, "kube-system_weft-x1_weftd.log"))
	if err != nil || !strings.Contains(string(logB), "weftd on node-1 args --node=node-1") {
		t.Fatalf("weftd log = %q, %v", logB, err)
	}
	crashB, _ := os.ReadFile(filepath.Join(opts.LogDir, "kube-system_weft-x1_crasher.log"))
	if strings.Count(string(crashB), "crash") < 2 {
		t.Fatalf("crasher log = %q, want one line per start", crashB)
	}
	_, ctrs, _ := p.State()
	if lt := ctrs[1].LastTerminated; lt == nil && ctrs[1].Terminated == nil {
		t.Fatalf("crasher state %+v has no termination record", ctrs[1])
	}
	select {
	case <-changed:
	default:
		t.Fatal("state changes were not notified")
	}

	p.Stop(5 * time.Second)
	stopped = true
	if b, err := os.ReadFile(termFile); err != nil || strings.TrimSpace(string(b)) != "term" {
		t.Fatalf("weftd did not get SIGTERM: %q, %v", b, err)
	}
	_, ctrs, _ = p.State()
	if ctrs[0].Running || ctrs[0].Terminated == nil || ctrs[0].Terminated.ExitCode != 0 {
		t.Fatalf("weftd after stop: %+v", ctrs[0])
	}
}

func TestLivenessProbeRestartsContainer(t *testing.T) {
	dir := t.TempDir()
	alive := filepath.Join(dir, "alive")
	writeFile(t, alive, "")
	grace := int64(1)
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "live", UID: "uid-live"},
		Spec: v1.PodSpec{
			NodeName: "node-1", HostNetwork: true, RestartPolicy: v1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: &grace,
			Containers: []v1.Container{{Name: "sleeper", Command: []string{"sh", "-c", "exec sleep 60"},
				LivenessProbe: &v1.Probe{PeriodSeconds: 1, FailureThreshold: 1, ProbeHandler: v1.ProbeHandler{
					Exec: &v1.ExecAction{Command: []string{"test", "-e", alive}}}}}},
		},
	}
	env := &envResolver{client: fake.NewClientset(), nodeName: "node-1", nodeIP: "127.0.0.1"}
	opts := ProcOptions{LogDir: filepath.Join(dir, "logs"), BackoffBase: 20 * time.Millisecond,
		BackoffMax: 50 * time.Millisecond, StopGraceMax: 5 * time.Second}
	p := startPodProcs(context.Background(), pod, opts, env, quietLog(), func() {})
	t.Cleanup(func() { p.Stop(0) })

	waitFor(t, "sleeper running", 5*time.Second, func() bool {
		_, ctrs, _ := p.State()
		return ctrs[0].Running
	})
	time.Sleep(1500 * time.Millisecond) // probes pass meanwhile: no restart
	if _, ctrs, _ := p.State(); ctrs[0].RestartCount != 0 || !ctrs[0].Running {
		t.Fatalf("healthy container restarted: %+v", ctrs[0])
	}
	if err := os.Remove(alive); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "restart after the liveness probe failed", 10*time.Second, func() bool {
		_, ctrs, _ := p.State()
		return ctrs[0].RestartCount >= 1 && ctrs[0].Running
	})
	_, ctrs, _ := p.State()
	if lt := ctrs[0].LastTerminated; lt == nil || lt.ExitCode != 128+int32(syscall.SIGTERM) {
		t.Fatalf("last termination %+v, want killed by SIGTERM", lt)
	}
}
