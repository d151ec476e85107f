package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PodNetnsName is the node emulator's name for a pod's network namespace:
// "wlp-" and the first 12 characters of the pod UID without dashes.
func PodNetnsName(uid string) string {
	s := strings.ReplaceAll(uid, "-", "")
	if len(s) > 12 {
		s = s[:12]
	}
	return PodNetnsPref + s
}

// pod looks up "namespace/name".
func (c *Cluster) pod(ctx context.Context, ref string) (*corev1.Pod, error) {
	nsName, name, ok := strings.Cut(ref, "/")
	if !ok || nsName == "" || name == "" {
		return nil, fmt.Errorf("pod %q: want NAMESPACE/NAME", ref)
	}
	client, err := c.Client()
	if err != nil {
		return nil, err
	}
	p, err := client.CoreV1().Pods(nsName).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("get pod %s: %w", ref, err)
	}
	return p, nil
}

// PodNetns returns the network namespace path of a pod, checking it exists.
func (c *Cluster) PodNetns(ctx context.Context, ref string) (string, *corev1.Pod, error) {
	p, err := c.pod(ctx, ref)
	if err != nil {
		return "", nil, err
	}
	if p.Spec.NodeName == "" {
		return "", nil, fmt.Errorf("pod %s is not scheduled yet", ref)
	}
	pid, ok := c.running("nodeemu-" + p.Spec.NodeName)
	if !ok {
		return "", nil, fmt.Errorf("pod %s: node emulator of %s is not running", ref, p.Spec.NodeName)
	}
	// The pod netns is mounted in the node's mount namespace.
	path := fmt.Sprintf("/proc/%d/root%s/%s", pid, NetnsDir, PodNetnsName(string(p.UID)))
	h, err := ns.GetNS(path)
	if err != nil {
		return "", nil, fmt.Errorf("pod %s (phase %s) has no network namespace on %s: %w", ref, p.Status.Phase, p.Spec.NodeName, err)
	}
	_ = h.Close()
	return path, p, nil
}

// Exec replaces the current process with cmd running in the pod's netns.
func (c *Cluster) Exec(ctx context.Context, ref string, cmd []string) error {
	if len(cmd) == 0 {
		return errors.New("exec: no command")
	}
	path, _, err := c.PodNetns(ctx, ref)
	if err != nil {
		return err
	}
	nsenter, err := lookPath("nsenter")
	if err != nil {
		return err
	}
	argv := append([]string{"nsenter", "--net=" + path, "--"}, cmd...)
	return syscall.Exec(nsenter, argv, os.Environ())
}

func lookPath(name string) (string, error) {
	for _, d := range filepath.SplitList(os.Getenv("PATH") + ":/usr/bin:/usr/sbin:/bin:/sbin") {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found in PATH", name)
}

// ProbeResult is the outcome of one probe.
type ProbeResult struct {
	Allowed  bool
	Answerer string // the reply (pod name) when allowed
	Reason   string // why denied (timeout, refused, ...)
	Target   string // ip:port
}

// Probe connects from one pod's netns to another pod's IP and port.
func (c *Cluster) Probe(ctx context.Context, from, to string, port int, proto string, timeout time.Duration) (*ProbeResult, error) {
	if proto != "tcp" && proto != "udp" {
		return nil, fmt.Errorf("proto %q: want tcp or udp", proto)
	}
	if port < 1 || port > 65535 {
		return nil, fmt.Errorf("port %d out of range", port)
	}
	path, _, err := c.PodNetns(ctx, from)
	if err != nil {
		return nil, err
	}
	dst, err := c.pod(ctx, to)
	if err != nil {
		return nil, err
	}
	if dst.Status.PodIP == "" {
		return nil, fmt.Errorf("pod %s has no IP yet", to)
	}
	return probeFrom(path, proto, net.JoinHostPort(dst.Status.PodIP, fmt.Sprint(port)), timeout)
}

// ProbeAddr connects from one pod's netns to any address (a Service's
// ClusterIP, a node's NodePort).
func (c *Cluster) ProbeAddr(ctx context.Context, from, addr, proto string, timeout time.Duration) (*ProbeResult, error) {
	if proto != "tcp" && proto != "udp" {
		return nil, fmt.Errorf("proto %q: want tcp or udp", proto)
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		return nil, fmt.Errorf("address %q: %w", addr, err)
	}
	path, _, err := c.PodNetns(ctx, from)
	if err != nil {
		return nil, err
	}
	return probeFrom(path, proto, addr, timeout)
}

func probeFrom(path, proto, target string, timeout time.Duration) (*ProbeResult, error) {
	res := &ProbeResult{Target: target}
	err := ns.WithNetNSPath(path, func(ns.NetNS) error {
		reply, perr := probeOnce(proto, target, timeout)
		if perr != nil {
			res.Reason = perr.Error()
			return nil
		}
		res.Allowed, res.Answerer = true, reply
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enter %s: %w", path, err)
	}
	return res, nil
}

// probeOnce runs in the source netns. Only a reply line counts as allowed.
func probeOnce(proto, target string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	conn, err := net.DialTimeout(proto, target, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	if err := conn.SetDeadline(deadline); err != nil {
		return "", err
	}
	if proto == "udp" {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return "", err
		}
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			return "", err
		}
		return strings.TrimSpace(string(buf[:n])), nil
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", err
	}
	return strings.TrimSpace(line), nil
}

// Status writes what runs.
func (c *Cluster) Status(ctx context.Context, w io.Writer) error {
	st, err := c.readState()
	if err != nil {
		fmt.Fprintln(w, "cluster: down")
		if left, _ := ourNetns(); len(left) > 0 {
			fmt.Fprintf(w, "leftover namespaces: %s (run hack/localcluster down)\n", strings.Join(left, " "))
		}
		return nil
	}
	health := "healthy"
	if err := c.healthy(ctx, st); err != nil {
		health = "unhealthy: " + err.Error()
	} else if !st.Complete {
		health = "starting"
	}
	fmt.Fprintf(w, "cluster: %s  nodes=%d subnets=%d bgp-router=%v cni=%s\nkubeconfig: %s\napiserver: %s\n", health, st.Nodes,
		max(st.Subnets, 1), st.BGPRouter, st.CNI, c.Kubeconfig(), APIServerURL())
	for _, n := range st.procs() {
		if pid, ok := c.running(n); ok {
			fmt.Fprintf(w, "  %-28s running  pid %d\n", n, pid)
		} else {
			fmt.Fprintf(w, "  %-28s stopped\n", n)
		}
	}
	client, err := c.Client()
	if err != nil {
		return err
	}
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		fmt.Fprintf(w, "nodes: %v\n", err)
		return nil
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		ready := "NotReady"
		if nodeReady(n) {
			ready = "Ready"
		}
		ip := ""
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				ip = a.Address
			}
		}
		fmt.Fprintf(w, "  node %-10s %-8s ip=%s podCIDR=%s\n", n.Name, ready, ip, n.Spec.PodCIDR)
	}
	return nil
}
