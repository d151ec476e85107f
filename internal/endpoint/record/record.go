// Package record is the type of one endpoint record (a pod attachment on
// this node) and its validation, without the files it is stored in
// (internal/endpoint): the pure policy renderer takes it as input.
package record

import (
	"fmt"
	"net/netip"
	"strings"
)

// Endpoint is one pod attachment on this node.
type Endpoint struct {
	ContainerID  string   `json:"containerID"`
	IfName       string   `json:"ifname"`
	PodNamespace string   `json:"podNamespace"`
	PodName      string   `json:"podName"`
	PodUID       string   `json:"podUID"`
	HostVeth     string   `json:"hostVeth"`
	IPs          []string `json:"ips"` // CIDR notation, e.g. "10.244.1.5/24"; bare addresses in rebuilt records
	// Network is the CNI network name of the attachment, so GC of one
	// network never removes another's records. Empty in records written
	// before weft recorded it.
	Network string `json:"network,omitempty"`
	// Netns is the pod's network namespace path as the runtime passed it
	// (CNI_NETNS), for weftctl's probes from the pod; empty in records
	// written before weft recorded it and in rebuilt ones.
	Netns string `json:"netns,omitempty"`
	// Bandwidth is what the runtime asked for the pod's shaping at ADD,
	// when weftd shapes (shaping/): nil otherwise.
	Bandwidth *Bandwidth `json:"bandwidth,omitempty"`
}

// Bandwidth is a pod's bandwidth request as the runtime passed it at ADD:
// the values of the kubernetes.io/ingress-bandwidth and
// kubernetes.io/egress-bandwidth annotations (a rate from the bandwidth
// capability alone is written in bits per second), and the capability's
// bursts in bits (0: none given).
type Bandwidth struct {
	Ingress      string `json:"ingress,omitempty"`
	Egress       string `json:"egress,omitempty"`
	IngressBurst uint64 `json:"ingressBurst,omitempty"`
	EgressBurst  uint64 `json:"egressBurst,omitempty"`
}

// Addrs returns the endpoint's addresses without prefix lengths.
func (e Endpoint) Addrs() ([]netip.Addr, error) {
	out := make([]netip.Addr, 0, len(e.IPs))
	for _, s := range e.IPs {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			a, aerr := netip.ParseAddr(s)
			if aerr != nil {
				return nil, fmt.Errorf("endpoint %s: bad ip %q: %w", e.HostVeth, s, err)
			}
			out = append(out, a)
			continue
		}
		out = append(out, p.Addr())
	}
	return out, nil
}

// Validate checks the fields a consumer relies on.
func (e Endpoint) Validate() error {
	if err := ValidName(e.HostVeth); err != nil {
		return err
	}
	if e.PodNamespace == "" || e.PodName == "" {
		return fmt.Errorf("endpoint %s: pod namespace and name are required", e.HostVeth)
	}
	if _, err := e.Addrs(); err != nil {
		return err
	}
	return nil
}

// ValidName accepts Linux interface names usable as file names.
func ValidName(n string) error {
	if n == "" || len(n) > 15 || n == "." || n == ".." || strings.ContainsAny(n, "/\x00 ") || strings.HasPrefix(n, ".") {
		return fmt.Errorf("endpoint: invalid host interface name %q", n)
	}
	return nil
}
