package nodeemu

import (
	"context"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func TestExpand(t *testing.T) {
	vals := map[string]string{"A": "1", "NODE": "n1"}
	for in, want := range map[string]string{
		"$(A)":            "1",
		"x-$(NODE)-y":     "x-n1-y",
		"$(MISSING)":      "$(MISSING)",
		"$$(A)":           "$(A)",
		"cost $5":         "cost $5",
		"open $(A":        "open $(A",
		"$(A)$(NODE)$":    "1n1$",
		"--iface=$(NODE)": "--iface=n1",
	} {
		if got := Expand(in, vals); got != want {
			t.Errorf("Expand(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestEnvResolution(t *testing.T) {
	client := fake.NewClientset(&v1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "weft"},
		Data:       map[string]string{"backend": "vxlan", "mtu": "1450"},
	})
	r := &envResolver{client: client, apiHost: "172.18.0.1", apiPort: "6443", nodeName: "node-2", nodeIP: "172.18.0.3",
		capacity: map[v1.ResourceName]resource.Quantity{v1.ResourceCPU: resource.MustParse("2")}}
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "weft-abcde", UID: "u-1", Labels: map[string]string{"app": "weft"}},
		Spec:       v1.PodSpec{NodeName: "node-2", HostNetwork: true, ServiceAccountName: "weft"},
	}
	c := &v1.Container{
		Name: "weftd",
		EnvFrom: []v1.EnvFromSource{{Prefix: "CFG_", ConfigMapRef: &v1.ConfigMapEnvSource{
			LocalObjectReference: v1.LocalObjectReference{Name: "weft"}}}},
		Env: []v1.EnvVar{
			{Name: "NODE_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "POD_IP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "HOST_IP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "status.hostIP"}}},
			{Name: "POD_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "APP", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
			{Name: "BACKEND", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{
				LocalObjectReference: v1.LocalObjectReference{Name: "weft"}, Key: "backend"}}},
			{Name: "OPT", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{
				LocalObjectReference: v1.LocalObjectReference{Name: "absent"}, Key: "k", Optional: ptrTo(true)}}},
			{Name: "CPUS", ValueFrom: &v1.EnvVarSource{ResourceFieldRef: &v1.ResourceFieldSelector{Resource: "limits.cpu"}}},
			{Name: "GREETING", Value: "hello $(NODE_NAME) on $(HOST_IP)"},
			{Name: "PATH", Value: "/opt/weft/bin:$(PATH)"},
		},
	}
	env, err := r.Env(context.Background(), pod, c)
	if err != nil {
		t.Fatal(err)
	}
	got := envMap(env)
	want := map[string]string{
		"PATH":                          "/opt/weft/bin:" + defaultPath,
		"HOSTNAME":                      "node-2",
		"KUBERNETES_SERVICE_HOST":       "172.18.0.1",
		"KUBERNETES_SERVICE_PORT":       "6443",
		"KUBERNETES_SERVICE_PORT_HTTPS": "6443",
		"KUBERNETES_PORT":               "tcp://172.18.0.1:6443",
		"CFG_backend":                   "vxlan",
		"CFG_mtu":                       "1450",
		"NODE_NAME":                     "node-2",
		"POD_IP":                        "172.18.0.3",
		"HOST_IP":                       "172.18.0.3",
		"POD_NAME":                      "weft-abcde",
		"POD_NAMESPACE":                 "kube-system",
		"APP":                           "weft",
		"BACKEND":                       "vxlan",
		"CPUS":                          "2",
		"GREETING":                      "hello node-2 on 172.18.0.3",
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("env\n got %v\nwant %v", got, want)
	}
	if len(env) != len(want) {
		t.Fatalf("duplicate keys in env: %v", env)
	}

	c.Env = append(c.Env, v1.EnvVar{Name: "X", ValueFrom: &v1.EnvVarSource{ConfigMapKeyRef: &v1.ConfigMapKeySelector{
		LocalObjectReference: v1.LocalObjectReference{Name: "weft"}, Key: "nope"}}})
	if _, err := r.Env(context.Background(), pod, c); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("a missing required key must fail, got %v", err)
	}
}

func ptrTo[T any](v T) *T { return &v }

func TestResolveBinaryAndImageEntrypoint(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir+"/weftd", "#!/bin/sh\n")
	if err := chmodX(dir + "/weftd"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"weftd", "/usr/local/bin/weftd"} {
		if got, err := ResolveBinary(dir, name); err != nil || got != dir+"/weftd" {
			t.Errorf("ResolveBinary(%q) = %q, %v", name, got, err)
		}
	}
	if got, err := ResolveBinary(dir, "sh"); err != nil || !strings.HasSuffix(got, "/sh") {
		t.Errorf("ResolveBinary(sh) = %q, %v (PATH fallback)", got, err)
	}
	if _, err := ResolveBinary(dir, "/nonexistent/tool"); err == nil {
		t.Error("a missing absolute binary must fail")
	}
	for img, want := range map[string]string{
		"ghcr.io/weftnet/weft:v0.1.0":       "weft",
		"weftd":                             "weftd",
		"localhost:5000/x/weftd@sha256:abc": "weftd",
	} {
		if got := imageEntrypoint(img); got != want {
			t.Errorf("imageEntrypoint(%q) = %q, want %q", img, got, want)
		}
	}
}
