package nodeemu

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func testPod() *v1.Pod {
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: "team-a", Name: "web-7d9f", UID: "0a1b2c3d-4e5f-6789-abcd-ef0123456789",
			Annotations: map[string]string{"kubernetes.io/ingress-bandwidth": "10M", "x": "y"},
		},
		Spec: v1.PodSpec{
			NodeName: "node-1",
			Containers: []v1.Container{{
				Name: "app", Image: "example/app:1",
				Ports: []v1.ContainerPort{
					{ContainerPort: 80},
					{ContainerPort: 8080, HostPort: 30080, Protocol: v1.ProtocolTCP},
					{ContainerPort: 53, HostPort: 5353, Protocol: v1.ProtocolUDP, HostIP: "172.18.0.2"},
				},
			}},
		},
	}
}

func TestNetnsNameAndSandboxID(t *testing.T) {
	pod := testPod()
	if got, want := NetnsName(pod.UID), "wlp-0a1b2c3d4e5f"; got != want {
		t.Fatalf("NetnsName = %q, want %q", got, want)
	}
	id := SandboxID(pod.UID)
	if len(id) != 64 || strings.Trim(id, "0123456789abcdef") != "" {
		t.Fatalf("SandboxID %q is not 64 hex chars", id)
	}
	if SandboxID(pod.UID) != id || SandboxID("other") == id {
		t.Fatal("SandboxID must be stable per UID and differ between UIDs")
	}
}

func TestCNIArgsLikeContainerd(t *testing.T) {
	pod := testPod()
	got := CNIArgsString(CNIArgs(pod, "abc123"))
	want := "IgnoreUnknown=1;K8S_POD_NAMESPACE=team-a;K8S_POD_NAME=web-7d9f;" +
		"K8S_POD_INFRA_CONTAINER_ID=abc123;K8S_POD_UID=0a1b2c3d-4e5f-6789-abcd-ef0123456789"
	if got != want {
		t.Fatalf("CNI_ARGS\n got %s\nwant %s", got, want)
	}
}

func TestCapabilityArgs(t *testing.T) {
	caps, err := CapabilityArgs(testPod())
	if err != nil {
		t.Fatal(err)
	}
	pm := caps[capPortMappings].([]PortMapping)
	wantPM := []PortMapping{
		{HostPort: 30080, ContainerPort: 8080, Protocol: "tcp"},
		{HostPort: 5353, ContainerPort: 53, Protocol: "udp", HostIP: "172.18.0.2"},
	}
	if !reflect.DeepEqual(pm, wantPM) {
		t.Fatalf("portMappings = %+v, want %+v", pm, wantPM)
	}
	bw := caps[capBandwidth].(*Bandwidth)
	if bw.IngressRate != 10_000_000 || bw.IngressBurst != math.MaxUint32 || bw.EgressRate != 0 || bw.EgressBurst != 0 {
		t.Fatalf("bandwidth = %+v", bw)
	}
	ann := caps[capPodAnnotations].(map[string]string)
	if ann["x"] != "y" || len(ann) != 2 {
		t.Fatalf("pod annotations = %v", ann)
	}
	// The JSON is what plugins see in runtimeConfig.
	b, _ := json.Marshal(caps[capPortMappings])
	if !strings.Contains(string(b), `"hostPort":30080,"containerPort":8080,"protocol":"tcp"`) {
		t.Fatalf("portMappings JSON %s", b)
	}

	pod := testPod()
	pod.Annotations = nil
	caps, err = CapabilityArgs(pod)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := caps[capBandwidth]; ok {
		t.Fatal("bandwidth capability must be absent without annotations")
	}
	pod.Annotations = map[string]string{annEgressBW: "lots"}
	if _, err := CapabilityArgs(pod); err == nil {
		t.Fatal("an unparsable bandwidth annotation must be an error")
	}
	pod.Annotations = map[string]string{annEgressBW: "10"}
	if _, err := CapabilityArgs(pod); err == nil {
		t.Fatal("a bandwidth below 1k must be rejected like kubelet does")
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestSelectAndLoadConf(t *testing.T) {
	dir := t.TempDir()
	if _, err := SelectConfFile(dir); err == nil || !strings.Contains(err.Error(), "no network config") {
		t.Fatalf("empty dir: err = %v", err)
	}
	writeFile(t, filepath.Join(dir, "README.txt"), "not a config")
	writeFile(t, filepath.Join(dir, "20-b.conflist"),
		`{"cniVersion":"1.0.0","name":"b","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}`)
	writeFile(t, filepath.Join(dir, "30-c.conf"), `{"cniVersion":"1.0.0","name":"c","type":"ptp"}`)
	f, err := SelectConfFile(dir)
	if err != nil || filepath.Base(f) != "20-b.conflist" {
		t.Fatalf("SelectConfFile = %q, %v; want 20-b.conflist", f, err)
	}
	list, _, err := LoadNetwork(dir)
	if err != nil || list.Name != "b" || len(list.Plugins) != 2 || !list.Plugins[1].Network.Capabilities["portMappings"] {
		t.Fatalf("LoadNetwork = %+v, %v", list, err)
	}
	// A single-plugin .conf sorting first is up-converted to a list.
	writeFile(t, filepath.Join(dir, "10-a.conf"), `{"cniVersion":"1.0.0","name":"a","type":"ptp"}`)
	list, file, err := LoadNetwork(dir)
	if err != nil || filepath.Base(file) != "10-a.conf" || list.Name != "a" || len(list.Plugins) != 1 || list.Plugins[0].Network.Type != "ptp" {
		t.Fatalf("LoadNetwork = %+v, %s, %v", list, file, err)
	}
	// The first file is broken: the runtime does not fall through to the next.
	writeFile(t, filepath.Join(dir, "05-broken.conflist"), `{"name":`)
	if _, _, err := LoadNetwork(dir); err == nil {
		t.Fatal("a broken first config must be an error")
	}
	if err := networkReady(dir); err == nil {
		t.Fatal("networkReady must report the broken config")
	}
}
