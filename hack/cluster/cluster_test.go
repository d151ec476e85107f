package cluster

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestNodeAddressing(t *testing.T) {
	if got := NodeIP(1).String(); got != "172.18.0.11" {
		t.Errorf("NodeIP(1) = %s", got)
	}
	if got := NodeIP(250).String(); got != "172.18.1.4" {
		t.Errorf("NodeIP(250) = %s", got)
	}
	if got := PodNetnsName("0a1b2c3d-4e5f-6789-abcd-ef0123456789"); got != "wlp-0a1b2c3d4e5f" {
		t.Errorf("PodNetnsName = %s", got)
	}
}

func TestNodePath(t *testing.T) {
	c, err := New(Options{Root: "/repo"})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string]string{
		"/etc/cni/net.d/10-weft.conflist":                     "/repo/.localcluster/nodes/wl-node2/etc-cni-net.d/10-weft.conflist",
		"/run/weft/subnet.json":                               "/repo/.localcluster/nodes/wl-node2/run-weft/subnet.json",
		"/var/run/secrets/kubernetes.io/serviceaccount/token": "/repo/.localcluster/nodes/wl-node2/var-run-secrets-kubernetes.io-serviceaccount/token",
		"/etc/hosts": "",
	}
	for in, want := range cases {
		if got := c.NodePath("wl-node2", in); got != want {
			t.Errorf("NodePath(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestTokensStableAndAppended(t *testing.T) {
	p := pki{dir: t.TempDir()}
	first, err := p.tokens([]tokenUser{{Name: "a", Groups: []string{"g1", "g2"}}})
	if err != nil {
		t.Fatal(err)
	}
	second, err := p.tokens([]tokenUser{{Name: "a"}, {Name: "b"}})
	if err != nil {
		t.Fatal(err)
	}
	if first["a"] == "" || first["a"] != second["a"] || second["b"] == "" || second["a"] == second["b"] {
		t.Fatalf("tokens not stable/unique: %v %v", first, second)
	}
	data, _ := os.ReadFile(filepath.Join(p.dir, "tokens.csv"))
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 || !strings.HasSuffix(lines[0], `,a,a,"g1,g2"`) {
		t.Fatalf("token file:\n%s", data)
	}
}

func TestStaticCNIFiles(t *testing.T) {
	root := t.TempDir()
	c, err := New(Options{Root: root, Nodes: 1})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{"/run/weft", "/etc/cni/net.d"} {
		if err := os.MkdirAll(c.NodePath("wl-node1", d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.writeStaticCNI("wl-node1", "10.244.3.0/24"); err != nil {
		t.Fatal(err)
	}
	var sf map[string]any
	data, _ := os.ReadFile(c.NodePath("wl-node1", "/run/weft/subnet.json"))
	if err := json.Unmarshal(data, &sf); err != nil {
		t.Fatal(err)
	}
	if sf["network"] != "10.244.0.0/16" || sf["subnet"] != "10.244.3.0/24" || sf["mtu"] != 1500.0 {
		t.Errorf("subnet file = %s", data)
	}
	var conf struct {
		Plugins []struct {
			Type string `json:"type"`
			IPAM struct {
				Type       string `json:"type"`
				SubnetFile string `json:"subnetFile"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	data, _ = os.ReadFile(c.NodePath("wl-node1", "/etc/cni/net.d/10-weft.conflist"))
	if err := json.Unmarshal(data, &conf); err != nil {
		t.Fatal(err)
	}
	if len(conf.Plugins) != 1 || conf.Plugins[0].Type != "weft" || conf.Plugins[0].IPAM.Type != "weft-ipam" ||
		conf.Plugins[0].IPAM.SubnetFile != "/run/weft/subnet.json" {
		t.Errorf("conflist = %s", data)
	}
}

func TestTwoSubnetAddressing(t *testing.T) {
	// 5 nodes on 2 subnets: 3 on the first, 2 on the second.
	want := []string{"172.18.0.11", "172.18.0.12", "172.18.0.13", "172.19.0.14", "172.19.0.15"}
	for i, w := range want {
		if got := NodeAddr(i+1, 5, 2).String(); got != w {
			t.Errorf("NodeAddr(%d, 5, 2) = %s, want %s", i+1, got, w)
		}
		if got := NodeAddr(i+1, 5, 1); got != NodeIP(i+1) {
			t.Errorf("NodeAddr(%d, 5, 1) = %s, want NodeIP %s", i+1, got, NodeIP(i+1))
		}
	}
	if RouterIP(0).String() != "172.18.0.254" || RouterIP(1).String() != "172.19.0.254" || BirdIP(1).String() != "172.19.0.253" {
		t.Errorf("router %s %s, bird %s", RouterIP(0), RouterIP(1), BirdIP(1))
	}
	if _, err := New(Options{Root: "/repo", Nodes: 1, Subnets: 2}); err == nil {
		t.Error("2 subnets for 1 node accepted")
	}
	c, err := New(Options{Root: "/repo", Nodes: 5, Subnets: 2, BGPRouter: true})
	if err != nil {
		t.Fatal(err)
	}
	conf := c.birdConf()
	for _, w := range []string{"protocol bgp node1 from node { source address 172.18.0.253; neighbor 172.18.0.11 as 64512; }",
		"protocol bgp node5 from node { source address 172.19.0.253; neighbor 172.19.0.15 as 64512; }",
		"local as 65001;", `password "weft-e2e-tor";`, "route 198.51.100.0/24 blackhole;", "route 0.0.0.0/0 blackhole;"} {
		if !strings.Contains(conf, w) {
			t.Errorf("bird config lacks %q:\n%s", w, conf)
		}
	}
}
