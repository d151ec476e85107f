package cni

import (
	"context"
	"encoding/json"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/daemon/masq"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/subnetfile"
	"github.com/weftnet/weft/internal/testutil"
)

// nodeState is what a node holds that weft could leave behind.
type nodeState struct {
	links, rules, sets, files []string
}

// snapshot lists the node netns's links, the user chains and rules of
// every table of both iptables backends and families (built-in chains'
// declarations aside: nft creates them on first use), its ipsets, and
// every file and directory under root.
func (e *env) snapshot(root string) nodeState {
	e.t.Helper()
	var s nodeState
	e.in(func() error {
		links, err := netlink.LinkList()
		for _, l := range links {
			s.links = append(s.links, l.Type()+" "+l.Attrs().Name)
		}
		return err
	})
	for _, tool := range []string{"iptables-legacy-save", "iptables-nft-save", "ip6tables-legacy-save", "ip6tables-nft-save"} {
		out, err := exec.Command("nsenter", "--net="+e.node.Path(), "--", tool).CombinedOutput()
		if err != nil {
			e.t.Fatalf("%s: %v\n%s", tool, err, out)
		}
		table := ""
		for _, line := range strings.Split(string(out), "\n") {
			f := strings.Fields(line)
			switch {
			case strings.HasPrefix(line, "*"):
				table = line
			case strings.HasPrefix(line, "-A ") || (strings.HasPrefix(line, ":") && len(f) > 1 && f[1] == "-"):
				s.rules = append(s.rules, tool+" "+table+" "+strings.Fields(line)[0]+" "+strings.Join(f[1:], " "))
			}
		}
	}
	out, err := exec.Command("nsenter", "--net="+e.node.Path(), "--", "ipset", "list", "-n").CombinedOutput()
	if err != nil {
		e.t.Fatalf("ipset: %v\n%s", err, out)
	}
	s.sets = strings.Fields(string(out))
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			s.files = append(s.files, strings.TrimPrefix(p, root)+" "+d.Type().String())
		}
		return err
	})
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

// nodePaths are a node's CNI and weft paths under a test root.
type nodePaths struct{ root, confDir, binDir, ipamDir, runDir string }

func newNodePaths(t *testing.T) nodePaths {
	root := t.TempDir()
	p := nodePaths{root: root, confDir: root + "/etc/cni/net.d", binDir: root + "/opt/cni/bin",
		ipamDir: root + "/var/lib/cni/networks", runDir: root + "/run/weft"}
	// What a node with a container runtime has before weft: the CNI
	// directories and the reference plugins from the runtime's package.
	for _, d := range []string{p.confDir, p.binDir, p.ipamDir, root + "/run"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, b := range []string{"portmap", "bandwidth", "loopback"} {
		data, err := os.ReadFile(filepath.Join(testutil.RefPluginDir(t), b))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p.binDir, b), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

// installWeft puts on the node what weftd and the plugin create: binaries
// (weftd install-cni), the conflist, the subnet file, the socket,
// masquerade chains, policy-style and backend-style chains and sets in
// every table, backend and family, the VXLAN device, and two pods.
func (e *env) installWeft(p nodePaths) {
	e.t.Helper()
	weftd := filepath.Join(testutil.BinDir(e.t), "weftd")
	if out, err := exec.Command(weftd, "install-cni", "--src-dir", testutil.BinDir(e.t), "--cni-bin-dir", p.binDir).CombinedOutput(); err != nil {
		e.t.Fatalf("install-cni: %v\n%s", err, out)
	}
	sf := filepath.Join(p.runDir, "subnet.json")
	if err := subnetfile.Write(sf, &subnetfile.File{Network: netip.MustParsePrefix("10.79.0.0/16"),
		Subnet: netip.MustParsePrefix("10.79.3.0/24"), MTU: 1450}); err != nil {
		e.t.Fatal(err)
	}
	data, err := install.Conflist(install.ConflistOptions{CNIVersion: "1.0.0", SubnetFile: sf, EndpointDir: filepath.Join(p.runDir, "endpoints")})
	if err != nil {
		e.t.Fatal(err)
	}
	var list map[string]any
	_ = json.Unmarshal(data, &list)
	weft := list["plugins"].([]any)[0].(map[string]any)
	weft["ipMasq"] = true // the plugin's own WEFT-MASQ-SUBNET too
	weft["ipam"].(map[string]any)["dataDir"] = p.ipamDir
	data, _ = json.Marshal(list)
	if _, err := install.WriteConflist(p.confDir, data); err != nil {
		e.t.Fatal(err)
	}
	ln, err := net.Listen("unix", filepath.Join(p.runDir, "weftd.sock"))
	if err != nil {
		e.t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	e.weftKernelState()
	l, err := libcni.ConfListFromBytes(data)
	if err != nil {
		e.t.Fatal(err)
	}
	c := libcni.NewCNIConfigWithCacheDir([]string{p.binDir}, e.cacheDir, nil)
	for _, n := range []string{"u0", "u1"} {
		pod := e.newPod(n)
		e.in(func() error { _, err := c.AddNetworkList(context.Background(), l, pod.rt); return err })
	}
}

// weftKernelState adds weftd's kernel objects to the node netns.
func (e *env) weftKernelState() {
	e.t.Helper()
	ctx := context.Background()
	mode, err := iptables.Detect(ctx, e.node.Path())
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := masq.New(iptables.Runner{Mode: mode, NetNS: e.node.Path()}, netip.MustParsePrefix("10.79.0.0/16")).Apply(ctx); err != nil {
		e.t.Fatal(err)
	}
	sets := "create weft-pol-src hash:ip\nadd weft-pol-src 10.79.3.2\ncreate weft-vxlan-peers hash:ip\n"
	run := func(stdin, tool string, args ...string) {
		cmd := exec.Command("nsenter", append([]string{"--net=" + e.node.Path(), "--", tool}, args...)...)
		cmd.Stdin = strings.NewReader(stdin)
		if out, err := cmd.CombinedOutput(); err != nil {
			e.t.Fatalf("%s: %v\n%s", tool, err, out)
		}
	}
	run(sets, "ipset", "restore")
	// Policy-style chains in filter, a backend guard in raw, a mangle
	// chain: in both backends, IPv4 and IPv6.
	v4 := "*filter\n:WEFT-POL-FWD - [0:0]\n:WEFT-POL-FROM - [0:0]\n-A WEFT-POL-FWD -j WEFT-POL-FROM\n" +
		"-A WEFT-POL-FROM -m set --match-set weft-pol-src src -j RETURN\n" +
		"-A FORWARD -m comment --comment weft-policy-jump -j WEFT-POL-FWD\nCOMMIT\n" +
		"*raw\n:WEFT-VXLAN-GUARD - [0:0]\n-A WEFT-VXLAN-GUARD -m set ! --match-set weft-vxlan-peers src -j DROP\n" +
		"-A PREROUTING -p udp --dport 8472 -j WEFT-VXLAN-GUARD\nCOMMIT\n" +
		"*mangle\n:WEFT-MARK - [0:0]\n-A POSTROUTING -g WEFT-MARK\nCOMMIT\n"
	v6 := "*nat\n:WEFT-POSTRTG - [0:0]\n-A WEFT-POSTRTG -d fd00::/64 -j RETURN\n-A POSTROUTING -s fd00::/64 -j WEFT-POSTRTG\nCOMMIT\n"
	for _, m := range []string{"legacy", "nft"} {
		run(v4, "iptables-"+m+"-restore", "--noflush")
		run(v6, "ip6tables-"+m+"-restore", "--noflush")
	}
	e.in(func() error {
		return netlink.LinkAdd(&netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "weft.vxlan"}, VxlanId: 1, Port: 8472})
	})
}

// weftd uninstall removes everything weft created on the node: the links,
// chains (every table, both backends and families), sets and files listed
// before weft was installed equal those after it is uninstalled.
func TestUninstallLeavesNodeAsFound(t *testing.T) {
	e := newEnv(t)
	p := newNodePaths(t)
	before := e.snapshot(p.root)
	e.installWeft(p)
	during := e.snapshot(p.root)
	for _, want := range []string{"bridge weft0", "vxlan weft.vxlan"} {
		if !slices.Contains(during.links, want) {
			t.Fatalf("install did not create %s: %v", want, during.links)
		}
	}
	if !slices.ContainsFunc(during.rules, func(r string) bool { return strings.Contains(r, podnet.MasqChain) && strings.Contains(r, "iptables-") }) ||
		!slices.ContainsFunc(during.files, func(f string) bool { return strings.Contains(f, "/endpoints/wv") }) ||
		!slices.ContainsFunc(during.files, func(f string) bool { return strings.Contains(f, "/networks/weft/weft-ipam.") }) {
		t.Fatalf("install left no plugin state: rules %v\nfiles %v", during.rules, during.files)
	}
	weftd := filepath.Join(testutil.BinDir(t), "weftd")
	cmd := exec.Command("nsenter", "--net="+e.node.Path(), "--", weftd, "uninstall", "--keep-lease", "--node-name", "n1",
		"--cni-conf-dir", p.confDir, "--cni-bin-dir", p.binDir, "--ipam-data-dir", filepath.Join(p.ipamDir, "weft"),
		"--subnet-file", filepath.Join(p.runDir, "subnet.json"), "--endpoint-dir", filepath.Join(p.runDir, "endpoints"),
		"--socket", filepath.Join(p.runDir, "weftd.sock"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("weftd uninstall: %v\n%s", err, out)
	}
	after := e.snapshot(p.root)
	for _, c := range []struct {
		what          string
		before, after []string
	}{{"links", before.links, after.links}, {"iptables", before.rules, after.rules}, {"ipsets", before.sets, after.sets}, {"files", before.files, after.files}} {
		slices.Sort(c.before)
		slices.Sort(c.after)
		if !slices.Equal(c.before, c.after) {
			t.Errorf("%s before install:\n  %s\nafter uninstall:\n  %s", c.what, strings.Join(c.before, "\n  "), strings.Join(c.after, "\n  "))
		}
	}
}
