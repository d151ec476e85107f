// Command nodeemu plays kubelet + container runtime for one node of the
// local cluster. The harness starts one per node, inside the node's network
// and mount namespaces (with the node's private /etc/cni/net.d,
// /opt/cni/bin, /var/lib/cni, /run/weft and
// /var/run/secrets/kubernetes.io/serviceaccount).
//
//	nodeemu --kubeconfig PATH --node-name NAME --node-ip IP --state-dir DIR \
//	  [--cni-conf-dir /etc/cni/net.d] [--cni-bin-dir /opt/cni/bin] \
//	  [--cni-cache-dir /var/lib/cni] [--netns-dir /run/netns] \
//	  [--image-bin-dir DIR] [--api-host H --api-port P --ca-cert FILE]
//
// Pod network namespaces are /run/netns/wlp-<first 12 hex chars of the pod
// UID>. Logs of hostNetwork pod containers go to
// <state-dir>/logs/<namespace>_<pod>_<container>.log. SIGINT/SIGTERM stop
// the emulator: hostNetwork pod processes are stopped, pod netns are kept
// (a restarted emulator adopts them).
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/hack/nodeemu"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nodeemu:", err)
		os.Exit(1)
	}
}

func run() error {
	fs := flag.NewFlagSet("nodeemu", flag.ContinueOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig with this node's credentials (system:node:<name>) (required)")
	nodeName := fs.String("node-name", "", "name of the Node to register (required)")
	nodeIP := fs.String("node-ip", "", "the node's InternalIP on the underlay (required)")
	stateDir := fs.String("state-dir", "", "directory for the emulator's own state and container logs (required)")
	confDir := fs.String("cni-conf-dir", "/etc/cni/net.d", "CNI network config dir; the lexicographically first *.conf/*.conflist/*.json is used")
	binDir := fs.String("cni-bin-dir", "/opt/cni/bin", "CNI plugin binaries (colon-separated list allowed)")
	cacheDir := fs.String("cni-cache-dir", "/var/lib/cni", "libcni cache dir")
	netnsDir := fs.String("netns-dir", "/run/netns", "where pod network namespaces are bind-mounted (wlp-<uid12>)")
	imageBinDir := fs.String("image-bin-dir", "", "stands for container images (colon-separated list): command[0] is looked up as DIR/<command[0]>, then DIR/<basename>, then on the node; without a command the image's last path element is the binary")
	cpu := fs.String("cpu", fmt.Sprint(runtime.NumCPU()), "node cpu capacity")
	memory := fs.String("memory", "8Gi", "node memory capacity")
	version := fs.String("kubelet-version", "v1.37.2", "kubelet version reported in NodeInfo")
	apiHostFlag := fs.String("api-host", "", "KUBERNETES_SERVICE_HOST for hostNetwork pods (default: the kubeconfig's server host)")
	apiPortFlag := fs.String("api-port", "", "KUBERNETES_SERVICE_PORT for hostNetwork pods (default: the kubeconfig's server port)")
	caCertFlag := fs.String("ca-cert", "", "ca.crt written into ServiceAccount volumes when the kube-root-ca.crt ConfigMap is unreadable (default: the kubeconfig's CA)")
	clusterDNS := fs.String("cluster-dns", "", "kube-dns Service IP written into the resolv.conf of pod programs (kubelet's --cluster-dns)")
	clusterDomain := fs.String("cluster-domain", "cluster.local", "cluster DNS domain (kubelet's --cluster-domain)")
	podPrograms := fs.String("pod-programs", "", "IMAGE=BINARY,...: pods (not hostNetwork) whose every container has one of these images run the binary (looked up in --image-bin-dir) inside the pod's namespaces; other pods get built-in echo servers")
	imageRootfs := fs.String("image-rootfs", "", "IMAGE=DIR,...: hostNetwork containers of these images run chrooted in DIR, the image's exported root file system (its binaries and tools), with their volumes bound in")
	logLevel := fs.String("log-level", "info", "debug|info|warn|error")
	maxResult := fs.String("max-cni-result-version", "1.0.0", "newest CNI result version accepted, like the runtime emulated (1.0.0 = containerd 1.6, the strictest in use; \"\" = any)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if *kubeconfig == "" || *nodeName == "" || *nodeIP == "" || *stateDir == "" {
		fs.Usage()
		return fmt.Errorf("--kubeconfig, --node-name, --node-ip and --state-dir are required")
	}
	if net.ParseIP(*nodeIP) == nil {
		return fmt.Errorf("--node-ip %q is not an IP address", *nodeIP)
	}
	// Plugins get paths (CNI_NETNS, ...) verbatim: make them absolute.
	for _, p := range []*string{stateDir, confDir, cacheDir, netnsDir} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return fmt.Errorf("path %s: %w", *p, err)
		}
		*p = abs
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))

	cpuQ, err := resource.ParseQuantity(*cpu)
	if err != nil {
		return fmt.Errorf("--cpu: %w", err)
	}
	memQ, err := resource.ParseQuantity(*memory)
	if err != nil {
		return fmt.Errorf("--memory: %w", err)
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	restCfg.UserAgent = "nodeemu/" + *nodeName
	host, port, err := apiHostPort(restCfg.Host)
	if err != nil {
		return err
	}
	if *apiHostFlag != "" {
		host = *apiHostFlag
	}
	if *apiPortFlag != "" {
		port = *apiPortFlag
	}
	ca, err := caPEM(restCfg)
	if err != nil {
		return err
	}
	if *caCertFlag != "" {
		if ca, err = os.ReadFile(*caCertFlag); err != nil {
			return fmt.Errorf("--ca-cert: %w", err)
		}
	}
	images, err := nodeemu.ParsePodPrograms(*podPrograms)
	if err != nil {
		return fmt.Errorf("--pod-programs: %w", err)
	}
	rootfs, err := nodeemu.ParseImageRootfs(*imageRootfs)
	if err != nil {
		return fmt.Errorf("--image-rootfs: %w", err)
	}
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return fmt.Errorf("client: %w", err)
	}

	cfg := nodeemu.Config{
		Node: nodeemu.NodeOptions{Name: *nodeName, IP: *nodeIP, KubeletVersion: *version, CPU: cpuQ, Memory: memQ},
		CNI: nodeemu.CNIOptions{ConfDir: *confDir, BinDirs: strings.Split(*binDir, ":"),
			CacheDir: *cacheDir, NetnsDir: *netnsDir, MaxResultVersion: *maxResult},
		Proc:     nodeemu.ProcOptions{ImageBinDir: absList(*imageBinDir), ImageRootfs: rootfs},
		Programs: nodeemu.ProgramOptions{Images: images, ClusterDNS: *clusterDNS, ClusterDomain: *clusterDomain},
		StateDir: *stateDir,
		APIHost:  host,
		APIPort:  port,
		CACert:   ca,
	}
	emu, err := nodeemu.New(cfg, client, log)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Info("node emulator starting", "node", *nodeName, "ip", *nodeIP, "apiserver", restCfg.Host)
	return emu.Run(ctx)
}

// apiHostPort splits the apiserver URL for KUBERNETES_SERVICE_HOST/PORT.
func apiHostPort(server string) (string, string, error) {
	u, err := url.Parse(server)
	if err != nil {
		return "", "", fmt.Errorf("apiserver URL %q: %w", server, err)
	}
	port := u.Port()
	if port == "" {
		port = "443"
	}
	return u.Hostname(), port, nil
}

func caPEM(c *rest.Config) ([]byte, error) {
	if len(c.TLSClientConfig.CAData) > 0 {
		return c.TLSClientConfig.CAData, nil
	}
	if c.TLSClientConfig.CAFile != "" {
		b, err := os.ReadFile(c.TLSClientConfig.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read CA file: %w", err)
		}
		return b, nil
	}
	return nil, nil
}

// absList makes every entry of a colon-separated path list absolute.
func absList(s string) string {
	parts := filepath.SplitList(s)
	for i, p := range parts {
		if abs, err := filepath.Abs(p); err == nil && p != "" {
			parts[i] = abs
		}
	}
	return strings.Join(parts, string(filepath.ListSeparator))
}
