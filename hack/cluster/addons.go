package cluster

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// The cluster add-ons kind runs on every cluster: kube-proxy (a DaemonSet,
// hostNetwork) and CoreDNS (a Deployment behind kube-dns).
var (
	//go:embed manifests/kube-proxy.yaml
	kubeProxyManifest string
	//go:embed manifests/coredns.yaml
	corednsManifest string
)

// Proxy modes of kube-proxy the cluster can run.
const (
	ProxyIPTables = "iptables"
	ProxyNFTables = "nftables"
	// DNSServiceIP is the kube-dns Service (kubelet's --cluster-dns).
	DNSServiceIP = "10.96.0.10"
	// ClusterDomain is kubelet's --cluster-domain.
	ClusterDomain = "cluster.local"
	// PodPrograms maps the images whose pods run a real program inside
	// the pod's namespaces to the binary in the cache (every other image
	// gets the node emulator's built-in echo servers).
	PodPrograms = "registry.k8s.io/coredns/coredns=coredns,weft.dev/testserver=testserver"
)

// validProxyMode reports whether m is a mode the cluster supports.
func validProxyMode(m string) bool { return m == ProxyIPTables || m == ProxyNFTables }

// renderAddon fills a manifest's {{NAME}} placeholders and fails on any
// placeholder left over.
func renderAddon(manifest string, vals map[string]string) (string, error) {
	out := manifest
	for k, v := range vals {
		out = strings.ReplaceAll(out, "{{"+k+"}}", v)
	}
	if i := strings.Index(out, "{{"); i >= 0 {
		end := min(len(out), i+40)
		return "", fmt.Errorf("manifest placeholder not filled: %q", out[i:end])
	}
	return out, nil
}

// addonManifests returns the rendered add-on manifests for a proxy mode.
func addonManifests(mode string) (map[string]string, error) {
	proxy, err := renderAddon(kubeProxyManifest, map[string]string{
		"MODE": mode, "CLUSTER_CIDR": ClusterCIDR, "API_SERVER": APIServerURL(),
	})
	if err != nil {
		return nil, fmt.Errorf("kube-proxy manifest: %w", err)
	}
	dns, err := renderAddon(corednsManifest, map[string]string{"DNS_IP": DNSServiceIP})
	if err != nil {
		return nil, fmt.Errorf("coredns manifest: %w", err)
	}
	return map[string]string{"kube-proxy.yaml": proxy, "coredns.yaml": dns}, nil
}

// applyAddons writes the rendered add-ons into the state dir (so an
// operator can read what runs) and applies them with kubectl.
func (c *Cluster) applyAddons(ctx context.Context, mode string) error {
	ms, err := addonManifests(mode)
	if err != nil {
		return err
	}
	for _, name := range []string{"kube-proxy.yaml", "coredns.yaml"} {
		p := c.path("addons", name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("create addons dir: %w", err)
		}
		if err := writeAtomic(p, []byte(ms[name]), 0o644); err != nil {
			return err
		}
		out, err := output(ctx, c.bin("kubectl"), "--kubeconfig", c.Kubeconfig(), "apply", "-f", p)
		if err != nil {
			return fmt.Errorf("apply %s: %w", name, err)
		}
		c.log.Info("applied add-on", "manifest", name, "output", strings.TrimSpace(out))
	}
	return nil
}

// switchProxyMode re-applies kube-proxy's ConfigMap with another mode and
// replaces its pods (kube-proxy reads its mode once, at start; the new one
// removes the rules of the other mode as it starts), then waits for the
// add-ons.
func (c *Cluster) switchProxyMode(ctx context.Context, client kubernetes.Interface, st *state, mode string) error {
	c.log.Info("switching kube-proxy mode", "from", st.ProxyMode, "to", mode)
	if err := c.applyAddons(ctx, mode); err != nil {
		return err
	}
	err := client.CoreV1().Pods("kube-system").DeleteCollection(ctx, metav1.DeleteOptions{},
		metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
	if err != nil {
		return fmt.Errorf("replace kube-proxy pods: %w", err)
	}
	st.ProxyMode = mode
	if err := c.writeState(st); err != nil {
		return err
	}
	return c.waitAddons(ctx, client, mode, 3*time.Minute)
}

// waitAddons waits until every node runs a ready kube-proxy pod created
// for this mode's ConfigMap, and CoreDNS has a ready replica.
func (c *Cluster) waitAddons(ctx context.Context, client kubernetes.Interface, mode string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for {
		ok, why, err := c.addonsReady(ctx, client)
		if err == nil && ok {
			c.log.Info("add-ons ready", "proxyMode", mode)
			return nil
		}
		if err != nil {
			why = err.Error()
		}
		last = why
		if time.Now().After(deadline) {
			return fmt.Errorf("add-ons not ready after %s: %s", timeout, last)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (c *Cluster) addonsReady(ctx context.Context, client kubernetes.Interface) (bool, string, error) {
	proxies, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-proxy"})
	if err != nil {
		return false, "", err
	}
	nodes := map[string]bool{}
	for i := range proxies.Items {
		p := &proxies.Items[i]
		if p.DeletionTimestamp == nil && podReady(p) {
			nodes[p.Spec.NodeName] = true
		}
	}
	if len(nodes) < c.opt.Nodes {
		return false, fmt.Sprintf("kube-proxy ready on %d of %d nodes", len(nodes), c.opt.Nodes), nil
	}
	dns, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "k8s-app=kube-dns"})
	if err != nil {
		return false, "", err
	}
	for i := range dns.Items {
		if dns.Items[i].DeletionTimestamp == nil && podReady(&dns.Items[i]) {
			return true, "", nil
		}
	}
	return false, "no CoreDNS replica ready", nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
