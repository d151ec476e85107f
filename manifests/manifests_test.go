package manifests

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/vxlan"
)

func TestWeftYAML(t *testing.T) {
	data, err := os.ReadFile("weft.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufioReader(data))
	var ds *appsv1.DaemonSet
	var cm *corev1.ConfigMap
	var roles []rbacv1.PolicyRule
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("decode: %v\n%s", err, doc)
		}
		switch o := obj.(type) {
		case *appsv1.DaemonSet:
			ds = o
		case *corev1.ConfigMap:
			cm = o
		case *rbacv1.ClusterRole:
			roles = append(roles, o.Rules...)
		case *rbacv1.Role:
			roles = append(roles, o.Rules...)
		}
	}
	if ds == nil || cm == nil {
		t.Fatal("DaemonSet or ConfigMap missing")
	}
	nc, err := config.Parse([]byte(cm.Data[config.Key]))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc.Validate(map[string]config.BackendValidator{"vxlan": vxlan.Validator{}}, config.Environment{}); err != nil {
		t.Fatal(err)
	}
	if cm.Name != config.Name || cm.Namespace != config.Namespace || ds.Namespace != "kube-system" {
		t.Fatal("wrong names or namespaces")
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || spec.PriorityClassName != "system-node-critical" || spec.ServiceAccountName != "weft" {
		t.Fatalf("pod spec %+v", spec)
	}
	if len(spec.InitContainers) != 1 || !slices.Equal(spec.InitContainers[0].Command, []string{"weftd", "install-cni"}) {
		t.Fatalf("init container %+v", spec.InitContainers)
	}
	c := spec.Containers[0]
	if c.Command[0] != "weftd" || c.SecurityContext == nil || !*c.SecurityContext.Privileged {
		t.Fatalf("container %+v", c)
	}
	var nodeName bool
	for _, e := range c.Env {
		nodeName = nodeName || (e.Name == "NODE_NAME" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName")
	}
	if !nodeName || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe.HTTPGet.Path != "/healthz" {
		t.Fatal("NODE_NAME or probes missing")
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.MountPath] = m.Name
	}
	for _, p := range []string{"/etc/cni/net.d", "/opt/cni/bin", "/run/weft", "/var/lib/cni", "/lib/modules", "/run/xtables.lock"} {
		if mounts[p] == "" {
			t.Errorf("mount %s missing", p)
		}
	}
	// RBAC: what weftd calls, nothing broad.
	allowed := map[string]bool{}
	for _, r := range roles {
		for _, res := range r.Resources {
			for _, v := range r.Verbs {
				if v == "*" || res == "*" {
					t.Fatalf("wildcard rule %+v", r)
				}
				if res == "secrets" {
					// The bgp backend's TCP-MD5 passwords: get by name only
					// (an empty resourceNames would grant every Secret).
					if v != "get" || !slices.Equal(r.ResourceNames, []string{"weft-bgp-passwords"}) {
						t.Errorf("secrets rule beyond get on weft-bgp-passwords: %+v", r)
					}
					continue
				}
				allowed[res+":"+v] = true
			}
		}
	}
	for _, need := range []string{"nodes:get", "nodes:list", "nodes:watch", "nodes:patch", "configmaps:list", "configmaps:watch",
		"events:create", "leases:create", "leases:get", "leases:list", "leases:delete"} {
		if !allowed[need] {
			t.Errorf("RBAC lacks %s", need)
		}
	}
	for k := range allowed {
		if strings.HasPrefix(k, "secrets:") || k == "nodes:delete" || k == "configmaps:update" {
			t.Errorf("RBAC grants %s", k)
		}
	}
}
