package nodeemu

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestPodProgramsSelectPodsByImage(t *testing.T) {
	imgs, err := ParsePodPrograms("registry.k8s.io/coredns/coredns=coredns, weft.dev/testserver=testserver")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ParsePodPrograms("no-equals"); err == nil {
		t.Error("ParsePodPrograms accepted an entry without =")
	}
	o := ProgramOptions{Images: imgs}
	pod := func(images ...string) *v1.Pod {
		p := &v1.Pod{}
		for _, im := range images {
			p.Spec.Containers = append(p.Spec.Containers, v1.Container{Image: im})
		}
		return p
	}
	for _, c := range []struct {
		pod  *v1.Pod
		want bool
	}{
		{pod("registry.k8s.io/coredns/coredns:v1.15.0"), true},
		{pod("weft.dev/testserver"), true},
		{pod("weft.dev/testserver@sha256:abcd"), true},
		{pod("localhost:5000/weft.dev/testserver:v1"), false},
		{pod("weft.dev/echo:test"), false},
		{pod("weft.dev/testserver:v1", "weft.dev/echo:test"), false}, // mixed: built-in servers for all
		{pod(), false},
	} {
		if got := o.programPod(c.pod); got != c.want {
			t.Errorf("programPod(%v) = %v, want %v", c.pod.Spec.Containers, got, c.want)
		}
	}
	hn := pod("weft.dev/testserver")
	hn.Spec.HostNetwork = true
	if o.programPod(hn) {
		t.Error("a hostNetwork pod runs as a node process, not a pod program")
	}
}

func TestResolvConfFollowsDNSPolicy(t *testing.T) {
	o := ProgramOptions{ClusterDNS: "10.96.0.10", ClusterDomain: "cluster.local"}
	p := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "team"}}
	got, err := o.resolvConf(p)
	if err != nil {
		t.Fatal(err)
	}
	want := "search team.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
	if string(got) != want {
		t.Errorf("ClusterFirst resolv.conf:\n%s\nwant:\n%s", got, want)
	}
	one := "1"
	p.Spec.DNSPolicy = v1.DNSNone
	p.Spec.DNSConfig = &v1.PodDNSConfig{Nameservers: []string{"192.0.2.53"}, Searches: []string{"example"},
		Options: []v1.PodDNSConfigOption{{Name: "ndots", Value: &one}, {Name: "edns0"}}}
	if got, _ = o.resolvConf(p); string(got) != "search example\nnameserver 192.0.2.53\noptions ndots:1 edns0\n" {
		t.Errorf("None + dnsConfig resolv.conf:\n%s", got)
	}
}

// TestProgSandboxOwnsEtcAndNetns runs a program the way the emulator runs
// pod programs: in a network namespace (here a fresh one) with the pod's
// /etc bound over the node's, in a mount namespace of its own.
func TestProgSandboxOwnsEtcAndNetns(t *testing.T) {
	requireRoot(t)
	name := "wlp-progtest"
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	dir := t.TempDir()
	etc := filepath.Join(dir, "etc")
	if err := writeFileAtomic(filepath.Join(etc, "resolv.conf"), []byte("nameserver 10.96.0.10\n")); err != nil {
		t.Fatal(err)
	}
	sa := filepath.Join(dir, "sa")
	if err := writeFileAtomic(filepath.Join(sa, "token"), []byte("pod-token\n")); err != nil {
		t.Fatal(err)
	}
	target := t.TempDir() // stands for the node's ServiceAccount directory
	sb := &progSandbox{netns: "/run/netns/" + name, etc: etc, binds: [][2]string{{sa, target}}}
	cmd, err := sb.command("/bin/sh", []string{"-c", "cat /etc/resolv.conf " + target + "/token; ip -o link show | wc -l"})
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("run in sandbox: %v: %s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	if len(lines) != 3 || lines[0] != "nameserver 10.96.0.10" || lines[1] != "pod-token" || lines[2] != "1" {
		t.Errorf("sandbox saw %q, want the pod's resolv.conf, its token and only lo in a fresh netns", lines)
	}
	host, _ := os.ReadFile("/etc/resolv.conf")
	if strings.Contains(string(host), "10.96.0.10") {
		t.Error("the node's /etc/resolv.conf changed")
	}
	if _, err := os.Stat(filepath.Join(target, "token")); err == nil {
		t.Error("the bind mount leaked out of the program's mount namespace")
	}
}
