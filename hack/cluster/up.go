package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// Client returns a client with the admin kubeconfig.
func (c *Cluster) Client() (kubernetes.Interface, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
	if err != nil {
		return nil, fmt.Errorf("load admin kubeconfig: %w", err)
	}
	cfg.UserAgent = "weft-localcluster"
	cfg.QPS, cfg.Burst = 50, 100
	return kubernetes.NewForConfig(cfg)
}

// cniMode resolves "auto" to "manifest" when manifests/weft.yaml exists.
func (c *Cluster) cniMode() string {
	if c.opt.CNI != "auto" {
		return c.opt.CNI
	}
	if _, err := os.Stat(c.manifestPath()); err == nil {
		return "manifest"
	}
	return "static"
}

func (c *Cluster) manifestPath() string { return filepath.Join(c.opt.Root, "manifests", "weft.yaml") }

// Up brings the cluster up, or checks that the running one is healthy and
// has the requested shape. A partial or different cluster is torn down and
// made again.
func (c *Cluster) Up(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root (network and mount namespaces)")
	}
	mode := c.cniMode()
	if mode != "static" && mode != "manifest" {
		return fmt.Errorf("cni mode %q: want auto, static or manifest", c.opt.CNI)
	}
	for _, b := range []string{"weft-etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "nodeemu",
		"kube-proxy", "coredns"} {
		if _, err := os.Stat(c.bin(b)); err != nil {
			return fmt.Errorf("binary %s missing in %s (run hack/localcluster build): %w", b, c.opt.BinDir, err)
		}
	}
	if st, err := c.readState(); err == nil {
		if st.Complete && st.Nodes == c.opt.Nodes && st.CNI == mode && st.Image == c.opt.Image && c.healthy(ctx, st) == nil {
			c.log.Info("cluster already up", "nodes", st.Nodes, "cni", st.CNI, "proxyMode", st.ProxyMode)
			if st.ProxyMode == c.opt.ProxyMode {
				return nil
			}
			client, err := c.Client()
			if err != nil {
				return err
			}
			return c.switchProxyMode(ctx, client, st, c.opt.ProxyMode)
		}
		c.log.Info("existing cluster is partial or different: recreating")
		if err := c.Down(ctx); err != nil {
			return fmt.Errorf("tear down previous cluster: %w", err)
		}
	} else if left, _ := ourNetns(); len(left) > 0 {
		c.log.Info("leftovers of a crashed cluster: cleaning up first", "netns", left)
		if err := c.Down(ctx); err != nil {
			return fmt.Errorf("clean up leftovers: %w", err)
		}
	}
	if err := c.up(ctx, mode); err != nil {
		return fmt.Errorf("cluster up: %w (logs in %s; run hack/localcluster down to clean up)", err, c.logDir())
	}
	return nil
}

func (c *Cluster) up(ctx context.Context, mode string) error {
	start := time.Now()
	_ = os.RemoveAll(c.logDir())
	if err := os.MkdirAll(c.opt.StateDir, 0o755); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	if err := checkUnderlayFree(ctx); err != nil {
		return err
	}
	st := &state{Nodes: c.opt.Nodes, CNI: mode, ProxyMode: c.opt.ProxyMode, Image: c.opt.Image, MadeRunNetnsMount: !isMountPoint(NetnsDir)}
	if _, err := os.Stat(NetnsDir); errors.Is(err, os.ErrNotExist) {
		st.MadeRunNetnsDir = true
	}
	if err := c.writeState(st); err != nil {
		return err
	}
	if err := ensureUnderlay(ctx); err != nil {
		return err
	}
	if err := attach(ctx, ControlNS, mustAddr(ControlIP)); err != nil {
		return err
	}
	if err := c.ensureHostDirs(st); err != nil {
		return err
	}
	if err := c.ensureMntDir(ctx); err != nil {
		return err
	}
	for i := 1; i <= c.opt.Nodes; i++ {
		n := NodeName(i)
		if err := attach(ctx, n, NodeIP(i)); err != nil {
			return err
		}
		// Nodes have no default route (nothing leaves the machine), so
		// the Service range gets one on the underlay, as a default route
		// would carry it: a packet to a ClusterIP without endpoints must
		// reach FORWARD, where kube-proxy rejects it, instead of meeting
		// "network unreachable" at the routing decision.
		if err := run(ctx, "ip", "-n", n, "route", "replace", ServiceCIDR, "dev", "eth0"); err != nil {
			return err
		}
		for _, d := range []string{"", "state"} {
			if err := os.MkdirAll(filepath.Join(c.nodeDir(n), d), 0o755); err != nil {
				return fmt.Errorf("create node dir: %w", err)
			}
		}
		if err := c.ensureNodeMounts(ctx, n); err != nil {
			return err
		}
	}
	if err := c.writeCredentials(c.opt.Nodes); err != nil {
		return err
	}
	c.log.Info("network ready; starting control plane", "elapsed", time.Since(start).Round(time.Millisecond))
	if err := c.startControlPlane(ctx); err != nil {
		return err
	}
	c.log.Info("apiserver ready", "elapsed", time.Since(start).Round(time.Millisecond))
	client, err := c.Client()
	if err != nil {
		return err
	}
	if mode == "manifest" {
		if err := c.applyManifest(ctx); err != nil {
			return err
		}
	} else if err := c.installStaticPlugins(); err != nil {
		return err
	}
	if err := c.applyAddons(ctx, c.opt.ProxyMode); err != nil {
		return err
	}
	flags := nodeemuFlags(ctx, c.bin("nodeemu"))
	rootfs, err := c.imageRootfsFlag(flags)
	if err != nil {
		return err
	}
	for i := 1; i <= c.opt.Nodes; i++ {
		if err := c.startNodeemu(ctx, i, flags, rootfs); err != nil {
			return err
		}
	}
	if err := c.waitNodes(ctx, client, mode, 3*time.Minute); err != nil {
		return err
	}
	if err := c.waitAddons(ctx, client, c.opt.ProxyMode, 3*time.Minute); err != nil {
		return err
	}
	st.Complete = true
	if err := c.writeState(st); err != nil {
		return err
	}
	c.log.Info("cluster up", "nodes", c.opt.Nodes, "cni", mode, "proxyMode", c.opt.ProxyMode, "kubeconfig", c.Kubeconfig(),
		"elapsed", time.Since(start).Round(time.Millisecond))
	return nil
}

// waitNodes waits until every node is registered, Ready, and has a pod
// CIDR from the controller-manager; in static mode it then writes each
// node's subnet file and conflist.
func (c *Cluster) waitNodes(ctx context.Context, client kubernetes.Interface, mode string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	done := map[string]bool{}
	for len(done) < c.opt.Nodes {
		if time.Now().After(deadline) {
			return fmt.Errorf("nodes not ready after %s: %d of %d ready", timeout, len(done), c.opt.Nodes)
		}
		for i := 1; i <= c.opt.Nodes; i++ {
			n := NodeName(i)
			if done[n] {
				continue
			}
			if _, ok := c.running("nodeemu-" + n); !ok {
				return fmt.Errorf("node emulator of %s exited (see %s)", n, filepath.Join(c.logDir(), "nodeemu-"+n+".log"))
			}
			node, err := client.CoreV1().Nodes().Get(ctx, n, metav1.GetOptions{})
			if err != nil || node.Spec.PodCIDR == "" {
				continue
			}
			if mode == "static" {
				if err := c.writeStaticCNI(n, node.Spec.PodCIDR); err != nil {
					return err
				}
			}
			if nodeReady(node) {
				done[n] = true
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(300 * time.Millisecond):
		}
	}
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// healthy checks that every process runs and the apiserver is ready.
func (c *Cluster) healthy(ctx context.Context, st *state) error {
	names := []string{"weft-etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
	for i := 1; i <= st.Nodes; i++ {
		names = append(names, "nodeemu-"+NodeName(i))
	}
	for _, n := range names {
		if _, ok := c.running(n); !ok {
			return fmt.Errorf("%s: %w", n, errNotRunning)
		}
	}
	code, _, err := c.apiGet(ctx, "/readyz")
	if err != nil {
		return fmt.Errorf("apiserver: %w", err)
	}
	if code != 200 {
		return fmt.Errorf("apiserver /readyz: %d", code)
	}
	return nil
}
