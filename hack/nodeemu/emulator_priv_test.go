package nodeemu

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/client-go/kubernetes/fake"
)

// The privileged tier. The emulator wires pods with the reference bridge +
// host-local plugins, which create their bridge in the emulator's own netns;
// so the test body runs in a re-executed copy of the test binary inside a
// fresh network namespace of its own (the "node"), gone when it exits.

const inNodeNetnsEnv = "NODEEMU_TEST_IN_NODE_NETNS"

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("privileged test: needs root (network namespaces, links); run as root to include it")
	}
}

// inNodeNetns re-runs the calling test in a fresh network namespace and
// reports whether the caller is already that copy (and should do the work).
func inNodeNetns(t *testing.T) bool {
	t.Helper()
	requireRoot(t)
	if os.Getenv(inNodeNetnsEnv) == "1" {
		if err := loopbackUp(); err != nil {
			t.Fatalf("lo up in node netns: %v", err)
		}
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1", "-test.v", "-test.timeout=5m")
	cmd.Env = append(os.Environ(), inNodeNetnsEnv+"=1", "WEFT_REF_CNI_DIR="+refPluginDir(t))
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.CombinedOutput()
	t.Logf("test run in a fresh node netns:\n%s", out)
	if err != nil {
		t.Fatalf("test in node netns failed: %v", err)
	}
	return false
}

// refPluginDir finds the reference CNI plugins (make ref-plugins).
func refPluginDir(t *testing.T) string {
	t.Helper()
	d := os.Getenv("WEFT_REF_CNI_DIR")
	if d == "" {
		abs, err := filepath.Abs(filepath.Join("..", "..", "bin", "ref"))
		if err != nil {
			t.Fatal(err)
		}
		d = abs
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(d, p)); err != nil {
			t.Fatalf("reference CNI plugin %s missing in %s: run `make ref-plugins`", p, d)
		}
	}
	return d
}

type privEnv struct {
	dir, confDir, netnsDir, ipamDir string
	recLog                          string
	subnet                          *net.IPNet
	client                          *fake.Clientset
	cfg                             Config
}

func newPrivEnv(t *testing.T) *privEnv {
	t.Helper()
	dir := t.TempDir()
	r := rand.IntN(200) + 20
	_, subnet, _ := net.ParseCIDR(fmt.Sprintf("10.%d.%d.0/24", 200+rand.IntN(50), r))
	e := &privEnv{
		dir: dir, confDir: filepath.Join(dir, "net.d"), netnsDir: filepath.Join(dir, "netns"),
		ipamDir: filepath.Join(dir, "ipam"), subnet: subnet, client: fake.NewClientset(),
	}
	if err := os.MkdirAll(e.confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	// The recorder plugin, chained last, logs what the runtime passed.
	recBin := filepath.Join(dir, "bin")
	build := exec.Command("go", "build", "-o", recBin+"/", "./testdata/recorder")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build recorder plugin: %v\n%s", err, out)
	}
	e.recLog = filepath.Join(dir, "recorder.log")
	writeFile(t, filepath.Join(e.confDir, "10-test.conflist"), fmt.Sprintf(`{
  "cniVersion": "1.0.0", "name": "emu-test",
  "plugins": [{"type": "bridge", "bridge": "emu%d", "isGateway": true,
    "ipam": {"type": "host-local", "dataDir": %q, "ranges": [[{"subnet": %q}]]}},
   {"type": "recorder", "logFile": %q,
    "capabilities": {"portMappings": true, "io.kubernetes.cri.pod-annotations": true}}]}`,
		r, e.ipamDir, subnet.String(), e.recLog))
	e.cfg = Config{
		Node: NodeOptions{Name: "node-t", IP: "172.31.0.2", LeaseInterval: 100 * time.Millisecond,
			StatusInterval: 100 * time.Millisecond},
		CNI: CNIOptions{ConfDir: e.confDir, BinDirs: []string{refPluginDir(t), recBin},
			CacheDir: filepath.Join(dir, "cache"), NetnsDir: e.netnsDir},
		StateDir:  filepath.Join(dir, "state"),
		RetryBase: 50 * time.Millisecond,
		RetryMax:  300 * time.Millisecond,
	}
	t.Cleanup(func() {
		// Whatever happened, leave no netns mount behind.
		names, _ := listPodNetns(e.netnsDir)
		for _, n := range names {
			_ = removeNetns(filepath.Join(e.netnsDir, n))
		}
	})
	return e
}

// start runs an emulator until the returned stop function is called.
func (e *privEnv) start(t *testing.T) (stop func()) {
	t.Helper()
	emu, err := New(e.cfg, e.client, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- emu.Run(ctx) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("emulator Run: %v", err)
		}
	}
	t.Cleanup(stop)
	return stop
}

func (e *privEnv) pod(t *testing.T, name string) *v1.Pod {
	t.Helper()
	p, err := e.client.CoreV1().Pods("default").Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get pod %s: %v", name, err)
	}
	return p
}

func ask(t *testing.T, proto, addr string) (string, error) {
	t.Helper()
	c, err := net.DialTimeout(proto, addr, time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if proto == "udp" {
		if _, err := c.Write([]byte("who?")); err != nil {
			return "", err
		}
	}
	return bufio.NewReader(c).ReadString('\n')
}

func TestPrivilegedPodLifecycle(t *testing.T) {
	if !inNodeNetns(t) {
		return
	}
	e := newPrivEnv(t)
	ctx := context.Background()
	// A broken config sorts first: ADD fails until it is removed.
	broken := filepath.Join(e.confDir, "00-broken.conflist")
	writeFile(t, broken, `{"cniVersion":"1.0.0","name":"broken","plugins":[{"type":"no-such-plugin"}]}`)
	stop := e.start(t)

	waitFor(t, "node registered and lease renewed", 10*time.Second, func() bool {
		n, err := e.client.CoreV1().Nodes().Get(ctx, "node-t", metav1.GetOptions{})
		if err != nil || nodeReady(n.Status) != v1.ConditionTrue || n.Status.Addresses[0].Address != "172.31.0.2" {
			return false
		}
		l, err := e.client.CoordinationV1().Leases(leaseNamespace).Get(ctx, "node-t", metav1.GetOptions{})
		return err == nil && l.Spec.RenewTime != nil
	})

	uid := uuid.NewUUID()
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web-1", UID: uid,
			Annotations: map[string]string{annIngressBW: "1M", "team": "a"}},
		Spec: v1.PodSpec{NodeName: "node-t", Containers: []v1.Container{{Name: "app", Image: "app:1",
			Ports: []v1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: 5353, Protocol: v1.ProtocolUDP},
				{ContainerPort: 9999, Protocol: v1.ProtocolSCTP}, {ContainerPort: 8443, HostPort: 30443}}}}},
	}
	if _, err := e.client.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	// ADD fails: ContainerCreating with the CNI error in an event, retried.
	waitFor(t, "FailedCreatePodSandBox event", 10*time.Second, func() bool {
		evs, _ := e.client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		for _, ev := range evs.Items {
			if ev.Reason == "FailedCreatePodSandBox" && strings.Contains(ev.Message, "no-such-plugin") && ev.InvolvedObject.UID == uid {
				return true
			}
		}
		return false
	})
	p := e.pod(t, "web-1")
	if p.Status.Phase != v1.PodPending || p.Status.PodIP != "" || len(p.Status.ContainerStatuses) != 1 ||
		p.Status.ContainerStatuses[0].State.Waiting == nil || p.Status.ContainerStatuses[0].State.Waiting.Reason != "ContainerCreating" {
		t.Fatalf("pod after failed ADD: %+v", p.Status)
	}
	netnsPath := filepath.Join(e.netnsDir, NetnsName(uid))

	if err := os.Remove(broken); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod Running with an IP", 10*time.Second, func() bool {
		p = e.pod(t, "web-1")
		return p.Status.Phase == v1.PodRunning && p.Status.PodIP != ""
	})
	ip := net.ParseIP(p.Status.PodIP)
	if !e.subnet.Contains(ip) || p.Status.HostIP != "172.31.0.2" {
		t.Fatalf("pod IP %s not in %s (hostIP %s)", ip, e.subnet, p.Status.HostIP)
	}
	for _, c := range p.Status.Conditions {
		if c.Type == v1.PodReady && c.Status != v1.ConditionTrue {
			t.Fatalf("pod not Ready: %+v", p.Status.Conditions)
		}
	}
	if !netnsExists(netnsPath) {
		t.Fatalf("pod netns %s missing", netnsPath)
	}
	// The failed attempts left nothing behind: one netns, one cache entry.
	if names, _ := listPodNetns(e.netnsDir); len(names) != 1 {
		t.Fatalf("pod netns dir holds %v, want only %s", names, NetnsName(uid))
	}
	cni := libcni.NewCNIConfigWithCacheDir(e.cfg.CNI.BinDirs, e.cfg.CNI.CacheDir, nil)
	if atts, err := cni.GetCachedAttachments(""); err != nil || len(atts) != 1 || atts[0].Network != "emu-test" {
		t.Fatalf("libcni cache after recovery: %+v, %v", atts, err)
	}
	for _, proto := range []string{"tcp", "udp"} {
		port := map[string]string{"tcp": "8080", "udp": "5353"}[proto]
		got, err := ask(t, proto, net.JoinHostPort(ip.String(), port))
		if err != nil || got != "web-1\n" {
			t.Fatalf("%s %s:%s answered %q, %v; want the pod name", proto, ip, port, got, err)
		}
	}

	waitFor(t, "event recording the unserved SCTP port", 5*time.Second, func() bool {
		evs, _ := e.client.CoreV1().Events("default").List(ctx, metav1.ListOptions{})
		for _, ev := range evs.Items {
			if ev.Reason == "PortsNotServed" && strings.Contains(ev.Message, "9999/SCTP") {
				return true
			}
		}
		return false
	})

	// Restart: the new emulator adopts the running pod and removes a stale
	// netns whose pod is gone.
	stop()
	if _, err := ask(t, "tcp", net.JoinHostPort(ip.String(), "8080")); err == nil {
		t.Fatal("servers still answer after the emulator stopped")
	}
	stale := filepath.Join(e.netnsDir, "wlp-deadbeef0000")
	if err := createNetns(stale); err != nil {
		t.Fatal(err)
	}
	e.start(t)
	waitFor(t, "adopted pod answering again", 10*time.Second, func() bool {
		got, err := ask(t, "tcp", net.JoinHostPort(ip.String(), "8080"))
		return err == nil && got == "web-1\n"
	})
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale netns not removed on startup (stat err %v)", err)
	}
	if p2 := e.pod(t, "web-1"); p2.Status.PodIP != ip.String() {
		t.Fatalf("adoption changed the pod IP: %s -> %s", ip, p2.Status.PodIP)
	}

	// Delete: kubelet-style finalization (DEL, netns removed, object gone).
	p = e.pod(t, "web-1")
	now := metav1.Now()
	grace := int64(30)
	p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &now, &grace
	if _, err := e.client.CoreV1().Pods("default").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod object deleted by the node", 10*time.Second, func() bool {
		_, err := e.client.CoreV1().Pods("default").Get(ctx, "web-1", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if _, err := os.Stat(netnsPath); !os.IsNotExist(err) {
		t.Fatalf("netns %s still there after delete (stat err %v)", netnsPath, err)
	}
	assertReleased(t, e, uid, ip)
	assertRuntimeCalls(t, e, uid, netnsPath)
}

type recorded struct {
	Command       string                     `json:"command"`
	Netns         string                     `json:"netns"`
	Args          string                     `json:"args"`
	Ifname        string                     `json:"ifname"`
	ContainerID   string                     `json:"containerID"`
	RuntimeConfig map[string]json.RawMessage `json:"runtimeConfig"`
	PrevResult    bool                       `json:"prevResult"`
}

// assertRuntimeCalls checks what the chained recorder saw across the
// pod's life: containerd's CNI_ARGS, only the declared capabilities, and
// DEL twice (with netns and prevResult, then without either).
func assertRuntimeCalls(t *testing.T, e *privEnv, uid types.UID, netnsPath string) {
	t.Helper()
	b, err := os.ReadFile(e.recLog)
	if err != nil {
		t.Fatal(err)
	}
	var calls []recorded
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var r recorded
		if err := json.Unmarshal([]byte(l), &r); err != nil {
			t.Fatalf("recorder line %q: %v", l, err)
		}
		if r.ContainerID == SandboxID(uid) {
			calls = append(calls, r)
		}
	}
	if len(calls) != 3 || calls[0].Command != "ADD" || calls[1].Command != "DEL" || calls[2].Command != "DEL" {
		t.Fatalf("runtime calls for the pod = %+v, want ADD, DEL, DEL", calls)
	}
	add := calls[0]
	wantArgs := "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-1;K8S_POD_INFRA_CONTAINER_ID=" +
		SandboxID(uid) + ";K8S_POD_UID=" + string(uid)
	if add.Args != wantArgs || add.Ifname != "eth0" || add.Netns != netnsPath || !add.PrevResult {
		t.Fatalf("ADD = %+v\nwant args %s, netns %s, a prevResult", add, wantArgs, netnsPath)
	}
	if len(add.RuntimeConfig) != 2 {
		t.Fatalf("runtimeConfig keys %v: want exactly the declared portMappings and pod annotations", add.RuntimeConfig)
	}
	if pm := string(add.RuntimeConfig["portMappings"]); pm != `[{"hostPort":30443,"containerPort":8443,"protocol":"tcp"}]` {
		t.Fatalf("portMappings = %s", pm)
	}
	if ann := string(add.RuntimeConfig["io.kubernetes.cri.pod-annotations"]); !strings.Contains(ann, `"team":"a"`) {
		t.Fatalf("pod annotations = %s", ann)
	}
	if calls[1].Netns != netnsPath || !calls[1].PrevResult {
		t.Fatalf("first DEL = %+v, want netns and prevResult", calls[1])
	}
	if calls[2].Netns != "" || calls[2].PrevResult {
		t.Fatalf("second DEL = %+v, want neither netns nor prevResult", calls[2])
	}
}

// assertReleased checks that CNI DEL really ran: no libcni cache entry and
// no host-local reservation for the pod's address.
func assertReleased(t *testing.T, e *privEnv, uid types.UID, ip net.IP) {
	t.Helper()
	cni := libcni.NewCNIConfigWithCacheDir(e.cfg.CNI.BinDirs, e.cfg.CNI.CacheDir, nil)
	atts, err := cni.GetCachedAttachments(SandboxID(uid))
	if err != nil || len(atts) != 0 {
		t.Fatalf("libcni cache still holds the sandbox: %v, %v", atts, err)
	}
	if _, err := os.Stat(filepath.Join(e.ipamDir, "emu-test", ip.String())); !os.IsNotExist(err) {
		t.Fatalf("host-local still reserves %s (stat err %v)", ip, err)
	}
}
