package policy

import (
	"context"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/endpoint"

	"github.com/weftnet/weft/policy/rules"

	"github.com/weftnet/weft/policy/rules/rulestest"
)

// staticPod is x/a as kubelet reports a static pod: the mirror Pod has a
// UID of its own, the annotation holds the static pod's UID, and the record
// (K8S_POD_UID) carries the static pod's UID.
func staticPod(c *rulestest.Cluster) (*corev1.Pod, []endpoint.Endpoint) {
	p := c.Pod(rulestest.Ref{NS: "x", Pod: "a"}).DeepCopy()
	p.UID = "mirror-uid-of-x-a"
	p.Annotations = map[string]string{rules.MirrorAnnotation: "0f3c9a3e5d1b2c4a6e8f0a1b2c3d4e5f"}
	static := endpoint.Endpoint{ContainerID: "infra-static", IfName: "eth0", PodNamespace: "x", PodName: "a",
		PodUID: "0f3c9a3e5d1b2c4a6e8f0a1b2c3d4e5f", HostVeth: "wvstatic", IPs: []string{rulestest.IPOf(rulestest.Ref{NS: "x", Pod: "a"}).String() + "/24"}}
	otherName := static
	otherName.PodName, otherName.HostVeth, otherName.ContainerID = "a-other", "wvothername", "infra-other"
	staleUID := static
	staleUID.PodUID, staleUID.HostVeth, staleUID.ContainerID = "9999aaaa", "wvstale", "infra-stale"
	return p, []endpoint.Endpoint{static, otherName, staleUID}
}

// The renderer programs a static pod's record under its mirror Pod, but not
// a record of another name or of another static pod UID (an earlier
// manifest) with this name.
func TestStaticPodRecord(t *testing.T) {
	c := rulestest.NewCluster()
	mirror, eps := staticPod(c)
	var pods []*corev1.Pod
	for _, p := range c.Pods {
		if p.Namespace == "x" && p.Name == "a" {
			p = mirror
		}
		pods = append(pods, p)
	}
	st := rules.Render(rules.DefaultConfig(), rules.Input{Pods: pods, Namespaces: c.Namespaces, Endpoints: eps})
	want := map[string]bool{"wvstatic": true, "wvothername": false, "wvstale": false}
	for _, e := range st.Endpoints {
		if w, ok := want[e.HostVeth]; ok && e.Ready != w {
			t.Errorf("%s (%s/%s uid %s): ready=%v, want %v", e.HostVeth, e.Namespace, e.Name, e.UID, e.Ready, w)
		}
		delete(want, e.HostVeth)
	}
	if len(want) != 0 {
		t.Fatalf("endpoints not rendered: %v", want)
	}
	for veth, closed := range map[string]bool{"wvstatic": false, "wvothername": true, "wvstale": true} {
		ch := st.Chain(rules.ToChain(veth))
		if ch == nil || strings.Contains(fmtRules(ch), "fail closed") != closed {
			t.Errorf("%s: ingress chain fail-closed=%v wanted, got:\n%v", veth, closed, ch)
		}
	}
}

// Through the controller and the plugin's wait: the static pod's ADD
// returns (its veth is programmed); the record with another name times out.
func TestStaticPodProgrammed(t *testing.T) {
	c := rulestest.NewCluster()
	mirror, eps := staticPod(c)
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, n := range c.Namespaces {
		client.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{})
	}
	client.CoreV1().Pods("x").Create(ctx, mirror, metav1.CreateOptions{})
	dir := t.TempDir()
	for _, ep := range eps[:2] {
		if err := endpoint.Write(dir, ep); err != nil {
			t.Fatal(err)
		}
	}
	ctl, err := NewController(informers.NewSharedInformerFactory(client, 0), ControllerConfig{EndpointDir: dir,
		Dataplane: NewFakeDataplane(), MinSyncInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	go ctl.Run(ctx)
	srv := httptest.NewUnstartedServer(ProgrammedHandler(ctl))
	sock := t.TempDir() + "/weftd.sock"
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv.Listener = ln
	srv.Start()
	defer srv.Close()
	if err := endpoint.WaitProgrammed(ctx, sock, "wvstatic", 5*time.Second); err != nil {
		t.Fatalf("static pod's ADD would fail: %v", err)
	}
	if err := endpoint.WaitProgrammed(ctx, sock, "wvothername", 300*time.Millisecond); err == nil {
		t.Fatal("a record with another name was programmed")
	}
}
