package manifests

import (
	"bytes"
	"encoding/json"
	"os"
	"testing"

	corev1 "k8s.io/api/core/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"
)

// The kind recipe must turn kind's own CNI off and hand the controller-
// manager the same pod network weft's ConfigMap names, or every node's
// spec.podCIDR would fall outside weft's network.
func TestKindConfigMatchesConfigMap(t *testing.T) {
	data, err := os.ReadFile("kind-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var kind struct {
		Networking struct {
			DisableDefaultCNI bool   `json:"disableDefaultCNI"`
			PodSubnet         string `json:"podSubnet"`
		} `json:"networking"`
	}
	if err := yaml.Unmarshal(data, &kind); err != nil {
		t.Fatalf("kind-config.yaml: %v", err)
	}
	if !kind.Networking.DisableDefaultCNI {
		t.Fatal("kind-config.yaml: networking.disableDefaultCNI must be true")
	}
	network := configMapNetwork(t)
	if kind.Networking.PodSubnet != network {
		t.Fatalf("kind podSubnet %q != weft ConfigMap network %q", kind.Networking.PodSubnet, network)
	}
}

func configMapNetwork(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile("weft.yaml")
	if err != nil {
		t.Fatal(err)
	}
	r := utilyaml.NewYAMLReader(bufioReader(data))
	for {
		doc, err := r.Read()
		if err != nil {
			break
		}
		var cm corev1.ConfigMap
		if yaml.Unmarshal(bytes.TrimSpace(doc), &cm) != nil || cm.Kind != "ConfigMap" {
			continue
		}
		var nc struct {
			Network string `json:"network"`
		}
		if err := json.Unmarshal([]byte(cm.Data["net-conf.json"]), &nc); err != nil {
			t.Fatalf("net-conf.json: %v", err)
		}
		return nc.Network
	}
	t.Fatal("no ConfigMap in weft.yaml")
	return ""
}
