package nodeemu

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/libcni"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"
)

// Names the runtime side of CNI uses, as containerd does.
const (
	podIfName         = "eth0"
	netnsPrefix       = "wlp-"
	capPortMappings   = "portMappings"
	capBandwidth      = "bandwidth"
	capPodAnnotations = "io.kubernetes.cri.pod-annotations"
	annIngressBW      = "kubernetes.io/ingress-bandwidth"
	annEgressBW       = "kubernetes.io/egress-bandwidth"
)

// NetnsName is the name of a pod's network namespace file under the netns
// directory: "wlp-" and the first 12 characters of the pod UID without
// dashes. The harness's exec and probe commands rely on exactly this.
func NetnsName(uid types.UID) string {
	s := strings.ReplaceAll(string(uid), "-", "")
	if len(s) > 12 {
		s = s[:12]
	}
	return netnsPrefix + s
}

// SandboxID is the pod's sandbox ("infra container") ID, passed to CNI as
// CNI_CONTAINERID and K8S_POD_INFRA_CONTAINER_ID. It is derived from the pod
// UID so that a restarted emulator finds the libcni cache entries again.
func SandboxID(uid types.UID) string {
	sum := sha256.Sum256([]byte("weft-nodeemu-sandbox/" + string(uid)))
	return hex.EncodeToString(sum[:])
}

// CNIArgs returns the CNI_ARGS pairs containerd passes, in its order.
func CNIArgs(pod *v1.Pod, sandboxID string) [][2]string {
	return [][2]string{
		{"IgnoreUnknown", "1"},
		{"K8S_POD_NAMESPACE", pod.Namespace},
		{"K8S_POD_NAME", pod.Name},
		{"K8S_POD_INFRA_CONTAINER_ID", sandboxID},
		{"K8S_POD_UID", string(pod.UID)},
	}
}

// CNIArgsString renders args the way libcni puts them into CNI_ARGS.
func CNIArgsString(args [][2]string) string {
	parts := make([]string, 0, len(args))
	for _, kv := range args {
		parts = append(parts, kv[0]+"="+kv[1])
	}
	return strings.Join(parts, ";")
}

// PortMapping is one entry of the portMappings capability argument.
type PortMapping struct {
	HostPort      int32  `json:"hostPort"`
	ContainerPort int32  `json:"containerPort"`
	Protocol      string `json:"protocol"`
	HostIP        string `json:"hostIP,omitempty"`
}

// Bandwidth is the bandwidth capability argument (bits per second, bursts in
// bits; containerd uses math.MaxUint32 as the burst when none is given).
type Bandwidth struct {
	IngressRate  uint64 `json:"ingressRate,omitempty"`
	IngressBurst uint64 `json:"ingressBurst,omitempty"`
	EgressRate   uint64 `json:"egressRate,omitempty"`
	EgressBurst  uint64 `json:"egressBurst,omitempty"`
}

// PortMappings lists the pod's container ports that ask for a host port.
func PortMappings(pod *v1.Pod) []PortMapping {
	out := []PortMapping{}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.HostPort <= 0 {
				continue
			}
			proto := p.Protocol
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			out = append(out, PortMapping{
				HostPort:      p.HostPort,
				ContainerPort: p.ContainerPort,
				Protocol:      strings.ToLower(string(proto)),
				HostIP:        p.HostIP,
			})
		}
	}
	return out
}

// PodBandwidth reads the bandwidth annotations; nil when neither is set.
func PodBandwidth(annotations map[string]string) (*Bandwidth, error) {
	var bw Bandwidth
	set := false
	for _, a := range []struct {
		key   string
		rate  *uint64
		burst *uint64
	}{
		{annIngressBW, &bw.IngressRate, &bw.IngressBurst},
		{annEgressBW, &bw.EgressRate, &bw.EgressBurst},
	} {
		v, ok := annotations[a.key]
		if !ok {
			continue
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("annotation %s=%q: %w", a.key, v, err)
		}
		// Same bounds as kubelet's bandwidth helper: 1k .. 1P.
		if q.Value() < 1000 || q.Value() > 1_000_000_000_000_000 {
			return nil, fmt.Errorf("annotation %s=%q: out of range 1k..1P", a.key, v)
		}
		*a.rate = uint64(q.Value())
		*a.burst = math.MaxUint32
		set = true
	}
	if !set {
		return nil, nil
	}
	return &bw, nil
}

// CapabilityArgs builds the runtimeConfig capability arguments containerd
// offers; libcni hands each plugin only the ones it declares.
func CapabilityArgs(pod *v1.Pod) (map[string]interface{}, error) {
	caps := map[string]interface{}{
		capPortMappings: PortMappings(pod),
	}
	ann := map[string]string{}
	for k, v := range pod.Annotations {
		ann[k] = v
	}
	caps[capPodAnnotations] = ann
	bw, err := PodBandwidth(pod.Annotations)
	if err != nil {
		return nil, err
	}
	if bw != nil {
		caps[capBandwidth] = bw
	}
	return caps, nil
}

// SelectConfFile returns the lexicographically first network configuration
// file in dir, as kubelet/containerd pick it.
func SelectConfFile(dir string) (string, error) {
	files, err := libcni.ConfFiles(dir, []string{".conf", ".conflist", ".json"})
	if err != nil {
		return "", fmt.Errorf("read CNI config dir %s: %w", dir, err)
	}
	if len(files) == 0 {
		return "", fmt.Errorf("cni plugin not initialized: no network config found in %s", dir)
	}
	sort.Strings(files)
	return files[0], nil
}

// LoadNetwork loads the network list the runtime would use right now.
func LoadNetwork(dir string) (*libcni.NetworkConfigList, string, error) {
	file, err := SelectConfFile(dir)
	if err != nil {
		return nil, "", err
	}
	var list *libcni.NetworkConfigList
	if filepath.Ext(file) == ".conflist" {
		list, err = libcni.ConfListFromFile(file)
	} else {
		var conf *libcni.PluginConfig
		conf, err = libcni.ConfFromFile(file)
		if err == nil {
			list, err = libcni.ConfListFromConf(conf)
		}
	}
	if err != nil {
		return nil, file, fmt.Errorf("load CNI config %s: %w", file, err)
	}
	if len(list.Plugins) == 0 {
		return nil, file, fmt.Errorf("CNI config %s has no plugins", file)
	}
	return list, file, nil
}

// networkReady says whether the node's CNI configuration is loadable, the
// condition kubelet reports as NetworkReady.
func networkReady(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return fmt.Errorf("cni plugin not initialized: %w", err)
	}
	_, _, err := LoadNetwork(dir)
	return err
}
