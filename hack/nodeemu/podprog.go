package nodeemu

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ProgramOptions say which pods (not hostNetwork) run a real program
// instead of the built-in echo servers, and the DNS configuration such
// programs get (kubelet's --cluster-dns and --cluster-domain).
type ProgramOptions struct {
	// Images maps an image repository (no tag or digest) to the binary
	// that stands for it, looked up like a hostNetwork pod's command.
	Images        map[string]string
	ClusterDNS    string
	ClusterDomain string
}

// ParsePodPrograms decodes "repo=binary,repo=binary".
func ParsePodPrograms(s string) (map[string]string, error) {
	return parseImageMap(s, "pod program %q: want IMAGE=BINARY", func(v string) bool { return v != "" })
}

// parseImageMap decodes "repo=value,..." where valid accepts each value;
// bad is the error format for an entry.
func parseImageMap(s, bad string, valid func(string) bool) (map[string]string, error) {
	out := map[string]string{}
	for _, kv := range strings.Split(s, ",") {
		kv = strings.TrimSpace(kv)
		if kv == "" {
			continue
		}
		repo, v, ok := strings.Cut(kv, "=")
		if !ok || repo == "" || !valid(v) {
			return nil, fmt.Errorf(bad, kv)
		}
		out[repo] = v
	}
	return out, nil
}

// imageRepository strips the tag and digest from an image reference.
func imageRepository(image string) string {
	if i := strings.Index(image, "@"); i >= 0 {
		image = image[:i]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		image = image[:i]
	}
	return image
}

// programPod reports whether every container of a pod maps to a program
// (and it has no init containers): only such pods run programs, so the
// status always has one source.
func (o ProgramOptions) programPod(pod *v1.Pod) bool {
	if pod.Spec.HostNetwork || len(pod.Spec.InitContainers) > 0 || len(pod.Spec.Containers) == 0 {
		return false
	}
	for _, c := range pod.Spec.Containers {
		if _, ok := o.Images[imageRepository(c.Image)]; !ok {
			return false
		}
	}
	return true
}

// progSandbox is where a pod program runs: in the pod's network namespace,
// in a mount namespace of its own in which /etc is the pod's directory
// (resolv.conf, hosts, hostname and the volumes mounted below /etc) and the
// other volumes are bound over existing node paths (the ServiceAccount
// directory).
type progSandbox struct {
	netns string
	etc   string
	binds [][2]string // source, target outside /etc
	env   map[string]string
}

// command runs bin with args through nsenter and unshare inside the
// sandbox; the shell execs the program, so its pid is the container's.
func (s *progSandbox) command(bin string, args []string) (*exec.Cmd, error) {
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return nil, fmt.Errorf("pod programs need nsenter: %w", err)
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, b := range s.binds {
		fmt.Fprintf(&script, "mount --bind %s %s\n", shQuote(b[0]), shQuote(b[1]))
	}
	fmt.Fprintf(&script, "mount --rbind %s /etc\nexec \"$@\"\n", shQuote(s.etc))
	argv := []string{"--net=" + s.netns, "--", "unshare", "--mount", "--propagation", "private", "--",
		"sh", "-c", script.String(), "sh", bin}
	return exec.Command(nsenter, append(argv, args...)...), nil
}

func shQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// overrideEnv replaces or adds variables of env.
func overrideEnv(env []string, over map[string]string) []string {
	if len(over) == 0 {
		return env
	}
	out := make([]string, 0, len(env)+len(over))
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if _, ok := over[k]; !ok {
			out = append(out, kv)
		}
	}
	keys := make([]string, 0, len(over))
	for k := range over {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		out = append(out, k+"="+over[k])
	}
	return out
}

// resolvConf is the pod's /etc/resolv.conf as kubelet writes it for the
// pod's dnsPolicy.
func (o ProgramOptions) resolvConf(pod *v1.Pod) ([]byte, error) {
	var servers, search, opts []string
	switch pod.Spec.DNSPolicy {
	case v1.DNSDefault:
		return os.ReadFile("/etc/resolv.conf")
	case v1.DNSNone:
	default: // ClusterFirst, ClusterFirstWithHostNet (the pod is not hostNetwork)
		if o.ClusterDNS == "" {
			return os.ReadFile("/etc/resolv.conf")
		}
		d := o.ClusterDomain
		servers = []string{o.ClusterDNS}
		search = []string{pod.Namespace + ".svc." + d, "svc." + d, d}
		opts = []string{"ndots:5"}
	}
	if dc := pod.Spec.DNSConfig; dc != nil {
		servers = append(servers, dc.Nameservers...)
		search = append(search, dc.Searches...)
		for _, op := range dc.Options {
			if op.Value != nil {
				opts = append(opts, op.Name+":"+*op.Value)
			} else {
				opts = append(opts, op.Name)
			}
		}
	}
	var b strings.Builder
	if len(search) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(search, " "))
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(opts) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	}
	return []byte(b.String()), nil
}

// prepareSandbox writes the pod's /etc and volumes under the emulator's
// state dir and returns the sandbox its programs run in.
func (e *Emulator) prepareSandbox(ctx context.Context, pod *v1.Pod, netns, podIP string) (*progSandbox, error) {
	dir := filepath.Join(e.cfg.StateDir, "pods", string(pod.UID))
	sb := &progSandbox{netns: netns, etc: filepath.Join(dir, "etc"), env: e.serviceEnv(ctx)}
	resolv, err := e.cfg.Programs.resolvConf(pod)
	if err != nil {
		return nil, fmt.Errorf("resolv.conf: %w", err)
	}
	hostname := pod.Name
	if pod.Spec.Hostname != "" {
		hostname = pod.Spec.Hostname
	}
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n%s\t%s\n", podIP, hostname)
	for name, data := range map[string][]byte{"resolv.conf": resolv, "hosts": []byte(hosts), "hostname": []byte(hostname + "\n")} {
		if err := writeFileAtomic(filepath.Join(sb.etc, name), data); err != nil {
			return nil, err
		}
	}
	vols := map[string]*v1.Volume{}
	for i := range pod.Spec.Volumes {
		vols[pod.Spec.Volumes[i].Name] = &pod.Spec.Volumes[i]
	}
	seen := map[string]bool{}
	for _, c := range pod.Spec.Containers {
		for _, m := range c.VolumeMounts {
			if seen[m.MountPath] {
				continue
			}
			seen[m.MountPath] = true
			if err := e.sandboxVolume(ctx, pod, sb, dir, vols[m.Name], m); err != nil {
				return nil, fmt.Errorf("container %s volume %q at %s: %w", c.Name, m.Name, m.MountPath, err)
			}
		}
	}
	return sb, nil
}

// sandboxVolume materializes one volume mount of a pod program.
func (e *Emulator) sandboxVolume(ctx context.Context, pod *v1.Pod, sb *progSandbox, dir string, v *v1.Volume, m v1.VolumeMount) error {
	if v == nil {
		return fmt.Errorf("unknown volume")
	}
	if m.SubPath != "" || m.SubPathExpr != "" {
		return fmt.Errorf("subPath is not supported by the node emulator")
	}
	target := filepath.Clean(m.MountPath)
	inEtc := strings.HasPrefix(target, "/etc/")
	src := filepath.Join(dir, "volumes", v.Name)
	if inEtc {
		src = filepath.Join(sb.etc, strings.TrimPrefix(target, "/etc/"))
	}
	switch {
	case v.HostPath != nil:
		if inEtc {
			return fmt.Errorf("hostPath below /etc is not supported for pod programs")
		}
		src = v.HostPath.Path
	case v.EmptyDir != nil:
		if err := os.MkdirAll(src, 0o755); err != nil {
			return fmt.Errorf("create emptyDir: %w", err)
		}
	default:
		files, _, err := e.vols.volumeFiles(ctx, pod, v)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(src, 0o755); err != nil {
			return fmt.Errorf("create volume dir: %w", err)
		}
		for name, data := range files {
			if err := writeFileAtomic(filepath.Join(src, name), data); err != nil {
				return err
			}
		}
	}
	if inEtc {
		return nil
	}
	if _, err := os.Stat(target); err != nil {
		return fmt.Errorf("mount path must exist on the node for pod programs (or lie below /etc): %w", err)
	}
	sb.binds = append(sb.binds, [2]string{src, target})
	return nil
}

// serviceEnv points in-cluster clients at the kubernetes Service, as
// kubelet does for pods that are not hostNetwork (their traffic to it goes
// through kube-proxy). Without the Service it keeps the apiserver's own
// address.
func (e *Emulator) serviceEnv(ctx context.Context) map[string]string {
	svc, err := e.client.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil || svc.Spec.ClusterIP == "" || len(svc.Spec.Ports) == 0 {
		return nil
	}
	port := strconv.Itoa(int(svc.Spec.Ports[0].Port))
	return map[string]string{
		"KUBERNETES_SERVICE_HOST":       svc.Spec.ClusterIP,
		"KUBERNETES_SERVICE_PORT":       port,
		"KUBERNETES_SERVICE_PORT_HTTPS": port,
		"KUBERNETES_PORT":               "tcp://" + joinHostPort(svc.Spec.ClusterIP, port),
	}
}

// startPrograms runs a pod's containers as programs in its sandbox.
func (e *Emulator) startPrograms(ctx context.Context, pod *v1.Pod, run *podRun, netns string) error {
	sb, err := e.prepareSandbox(ctx, pod, netns, run.ips[0])
	if err != nil {
		return err
	}
	run.procs = startProcs(ctx, pod, e.cfg.Proc, e.env, e.log, func() { e.queue.Add(run.key) }, sb, run.ips[0])
	return nil
}
