// Package cluster is the local multi-node Kubernetes cluster of Weft's
// end-to-end tier: a real kube-apiserver (with embedded etcd),
// kube-controller-manager and kube-scheduler in a control-plane network
// namespace, and N node namespaces on an underlay bridge, each with its own
// mount namespace and a node emulator playing kubelet + container runtime.
//
// Every name the cluster creates starts with "wl-" (pod namespaces made by
// the node emulator: "wlp-"), so Down can find and remove all of it, also
// after a crash.
package cluster

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
)

// Names and addresses of the cluster. The underlay is 172.18.0.0/16, like
// kind's docker network.
const (
	Prefix        = "wl-"
	PodNetnsPref  = "wlp-"
	UnderlayNS    = "wl-underlay"
	ControlNS     = "wl-cp"
	UnderlayBr    = "wl-br0"
	HostVeth      = "wl-host"
	UnderlayCIDR  = "172.18.0.0/16"
	HostIP        = "172.18.0.1"
	ControlIP     = "172.18.0.2"
	APIPort       = "6443"
	ClusterCIDR   = "10.244.0.0/16"
	ServiceCIDR   = "10.96.0.0/16"
	ServiceAPIIP  = "10.96.0.1"
	NetnsDir      = "/run/netns"
	MaxNodes      = 200
	nodeIPOffset  = 10
	adminUser     = "weft-admin"
	cmUser        = "system:kube-controller-manager"
	schedUser     = "system:kube-scheduler"
	stateFileName = "state.json"
)

// NodeDirs are the node paths that get a private per-node directory in the
// node's mount namespace, so weftd and the plugins use production paths.
// /run/netns is per node too: pod namespaces live in their node's mount
// namespace (like on a real machine) and vanish with it; the harness
// reaches them through /proc/<node emulator pid>/root.
var nodeDirs = []string{"/etc/cni/net.d", "/opt/cni/bin", "/var/lib/cni", "/run/weft",
	"/var/run/secrets/kubernetes.io/serviceaccount", "/var/lib/kube-proxy", NetnsDir}

// Options configure a cluster.
type Options struct {
	Root     string // repository root (manifests/, .localcluster/)
	BinDir   string // built binaries: kube-*, kubectl, weft-etcd, nodeemu, cni/
	StateDir string // default <Root>/.localcluster
	Nodes    int
	CNI      string // "auto" (manifest if present, else static), "static", "manifest"
	// ProxyMode is kube-proxy's mode: "iptables" (default) or "nftables".
	ProxyMode string
	// Image, when set, is a `docker save` archive of Weft's image (make
	// image): the DaemonSet's containers run inside its root file system
	// (its weftd, plugins, iptables) instead of from the built binaries.
	Image string
	Log   *slog.Logger
}

// Cluster is a handle on the local cluster's state directory.
type Cluster struct {
	opt Options
	log *slog.Logger
}

// New returns a handle; it creates nothing.
func New(opt Options) (*Cluster, error) {
	if opt.Root == "" {
		return nil, errors.New("root directory is required")
	}
	if opt.StateDir == "" {
		opt.StateDir = filepath.Join(opt.Root, ".localcluster")
	}
	if opt.BinDir == "" {
		opt.BinDir = filepath.Join(opt.StateDir, "bin")
	}
	if opt.Nodes == 0 {
		opt.Nodes = 3
	}
	if opt.Nodes < 1 || opt.Nodes > MaxNodes {
		return nil, fmt.Errorf("nodes %d: must be 1..%d", opt.Nodes, MaxNodes)
	}
	if opt.CNI == "" {
		opt.CNI = "auto"
	}
	if opt.ProxyMode == "" {
		opt.ProxyMode = ProxyIPTables
	}
	if !validProxyMode(opt.ProxyMode) {
		return nil, fmt.Errorf("proxy mode %q: want %s or %s", opt.ProxyMode, ProxyIPTables, ProxyNFTables)
	}
	if opt.Log == nil {
		opt.Log = slog.Default()
	}
	return &Cluster{opt: opt, log: opt.Log}, nil
}

// Kubeconfig is the admin kubeconfig path.
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.opt.StateDir, "kubeconfig") }

func (c *Cluster) path(elem ...string) string {
	return filepath.Join(append([]string{c.opt.StateDir}, elem...)...)
}
func (c *Cluster) logDir() string          { return c.path("logs") }
func (c *Cluster) pidDir() string          { return c.path("pids") }
func (c *Cluster) mntDir() string          { return c.path("mnt") }
func (c *Cluster) nodeDir(n string) string { return c.path("nodes", n) }
func (c *Cluster) pki() pki                { return pki{dir: c.path("pki")} }
func (c *Cluster) bin(name string) string  { return filepath.Join(c.opt.BinDir, name) }

// NodeName is the name of node i (1-based).
func NodeName(i int) string { return fmt.Sprintf("wl-node%d", i) }

// NodeIP is the underlay address of node i (1-based).
func NodeIP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{172, 18, byte((i + nodeIPOffset) / 256), byte((i + nodeIPOffset) % 256)})
}

// APIServerURL is the apiserver as seen from the host and the nodes.
func APIServerURL() string { return "https://" + ControlIP + ":" + APIPort }

// state is what Up records for Down and for idempotent re-runs.
type state struct {
	Nodes int    `json:"nodes"`
	CNI   string `json:"cni"`
	// ProxyMode is the mode kube-proxy runs in.
	ProxyMode string `json:"proxyMode"`
	// Image is the image archive the DaemonSet's containers run from.
	Image string `json:"image,omitempty"`
	// MadeRunNetnsMount: /run/netns was not a mount point before Up.
	MadeRunNetnsMount bool `json:"madeRunNetnsMount"`
	// MadeRunNetnsDir: /run/netns did not exist before Up.
	MadeRunNetnsDir bool `json:"madeRunNetnsDir"`
	// CreatedDirs: host directories Up created (mount points), topmost
	// first within each chain; Down removes them if empty.
	CreatedDirs []string `json:"createdDirs"`
	Complete    bool     `json:"complete"`
}

func (c *Cluster) readState() (*state, error) {
	data, err := os.ReadFile(c.path(stateFileName))
	if err != nil {
		return nil, fmt.Errorf("read cluster state: %w", err)
	}
	var s state
	if err := json.Unmarshal(data, &s); err != nil {
		return nil, fmt.Errorf("decode cluster state: %w", err)
	}
	return &s, nil
}

func (c *Cluster) writeState(s *state) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return fmt.Errorf("encode cluster state: %w", err)
	}
	tmp := c.path(stateFileName + ".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	if err := os.Rename(tmp, c.path(stateFileName)); err != nil {
		return fmt.Errorf("write cluster state: %w", err)
	}
	return nil
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }
