package ipam

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/subnetfile"
)

func TestConfigErrorsCarryCodeAndField(t *testing.T) {
	badSubnetFile := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(badSubnetFile, []byte(`{"subnet":"10.0.0.5/24"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		stdin []byte
		code  uint
		field string
	}{
		{"malformed JSON", []byte(`{"cniVersion":"1.0.0","name":`), types.ErrDecodingFailure, "decode"},
		{"unknown cniVersion", netConfig(t, "9.9.9", `{"subnet":"10.0.0.0/24"}`, nil), types.ErrIncompatibleCNIVersion, "cniVersion"},
		{"missing name", []byte(`{"cniVersion":"1.0.0","ipam":{"subnet":"10.0.0.0/24"}}`), types.ErrInvalidNetworkConfig, "name"},
		{"name with slash", []byte(`{"cniVersion":"1.0.0","name":"../x","ipam":{"subnet":"10.0.0.0/24"}}`), types.ErrInvalidNetworkConfig, "name"},
		{"missing ipam", []byte(`{"cniVersion":"1.0.0","name":"n"}`), types.ErrInvalidNetworkConfig, "ipam"},
		{"no ranges", netConfig(t, "1.0.0", `{"type":"weft-ipam"}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges"},
		{"empty range set", netConfig(t, "1.0.0", `{"ranges":[[]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0]"},
		{"bad subnet", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/33"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"missing subnet", netConfig(t, "1.0.0", `{"ranges":[[{"rangeStart":"10.0.0.3"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"subnet too small", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/31"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].subnet"},
		{"rangeStart outside", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].rangeStart"},
		{"rangeEnd garbage", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"x"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].rangeEnd"},
		{"rangeEnd broadcast", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.255"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].rangeEnd"},
		{"gateway outside", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/24","gateway":"10.0.9.1"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][0].gateway"},
		{"overlap in set", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.0.0/25"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][1]"},
		{"overlap across sets", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/16"}],[{"subnet":"10.0.5.0/24"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[1]"},
		{"mixed family set", netConfig(t, "1.0.0", `{"ranges":[[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0][1].subnet"},
		{"legacy overlaps ranges", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24","ranges":[[{"subnet":"10.0.0.0/24"}]]}`, nil), types.ErrInvalidNetworkConfig, "ipam.ranges[0]"},
		{"legacy bad rangeStart", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.0"}`, nil), types.ErrInvalidNetworkConfig, "ipam.rangeStart"},
		{"bad route", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24","routes":[{"dst":"nope"}]}`, nil), types.ErrInvalidNetworkConfig, "ipam.routes[0]"},
		{"route without dst", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24","routes":[{"gw":"10.0.0.1"}]}`, nil), types.ErrInvalidNetworkConfig, "ipam.routes[0].dst"},
		{"route gw family", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24","routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"10.0.0.1"}]}`, nil), types.ErrInvalidNetworkConfig, "ipam.routes[1].gw"},
		{"invalid subnet file", netConfig(t, "1.0.0", `{"subnetFile":"`+badSubnetFile+`"}`, nil), types.ErrInvalidNetworkConfig, "ipam.subnetFile"},
		{"subnet file is a directory", netConfig(t, "1.0.0", `{"subnetFile":"`+t.TempDir()+`"}`, nil), types.ErrIOFailure, "ipam.subnetFile"},
		{"missing subnet file", netConfig(t, "1.0.0", `{"subnetFile":"/nonexistent/weft/subnet.json"}`, nil), types.ErrTryAgainLater, "ipam.subnetFile"},
		{"missing resolvConf", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24","resolvConf":"/nonexistent/resolv.conf"}`, nil), types.ErrInvalidNetworkConfig, "ipam.resolvConf"},
		{"bad runtimeConfig ip", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24"}`, map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.0.0.x"}}}), types.ErrInvalidNetworkConfig, "runtimeConfig.ips"},
		{"requested outside ranges", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24"}`, map[string]any{"args": map[string]any{"cni": map[string]any{"ips": []string{"10.9.0.5"}}}}), types.ErrInvalidNetworkConfig, "10.9.0.5"},
		{"requested gateway", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24"}`, map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.0.0.1/24"}}}), types.ErrInvalidNetworkConfig, "reserved"},
		{"two requested in one set", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24"}`, map[string]any{"runtimeConfig": map[string]any{"ips": []string{"10.0.0.7", "10.0.0.8"}}}), types.ErrInvalidNetworkConfig, "ipam"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, o := newFake()
			_, err := p.Add(context.Background(), cmdArgs("c1", "eth0", c.stdin))
			wantCode(t, err, c.code, c.field)
			for _, dir := range o.Dirs() {
				if s := o.Get(dir).Snapshot(); len(s.Allocations) != 0 {
					t.Fatalf("failed ADD left allocations: %+v", s.Allocations)
				}
			}
		})
	}
}

func TestConfigBadCNIArgsAndEnv(t *testing.T) {
	p, _ := newFake()
	conf := netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24"}`, nil)
	a := cmdArgs("c1", "eth0", conf)
	a.Args = "IgnoreUnknown=1;IP=10.0.0.300"
	_, err := p.Add(context.Background(), a)
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_ARGS IP")
	_, err = p.Add(context.Background(), cmdArgs("c1", "", conf))
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_IFNAME")
	_, err = p.Add(context.Background(), cmdArgs("", "eth0", conf))
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID")
	// Whitespace could never reach the store.
	_, err = p.Add(context.Background(), cmdArgs("a b", "eth0", conf))
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID")
	_, err = p.Add(context.Background(), cmdArgs("ab", "eth 0", conf))
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_IFNAME")
	_, err = p.Add(context.Background(), cmdArgs("ab", "averyveryverylongifname", conf))
	wantCode(t, err, types.ErrInvalidEnvironmentVariables, "CNI_IFNAME")
	wantCode(t, p.Del(context.Background(), cmdArgs("a\nb", "eth0", conf)), types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID")
}

func TestConfigHostLocalShape(t *testing.T) {
	// A configuration written for host-local, copied verbatim.
	conf := []byte(`{
	  "cniVersion": "1.0.0", "name": "mynet", "type": "bridge", "bridge": "cni0",
	  "ipam": {
	    "type": "host-local",
	    "ranges": [
	      [{"subnet": "10.10.0.0/16", "rangeStart": "10.10.1.20", "rangeEnd": "10.10.3.50", "gateway": "10.10.0.254"},
	       {"subnet": "172.16.5.0/24"}],
	      [{"subnet": "3ffe:ffff:0:01ff::/64", "rangeStart": "3ffe:ffff:0:01ff::0010", "rangeEnd": "3ffe:ffff:0:01ff::0020"}]
	    ],
	    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.10.5.1"}, {"dst": "3ffe:ffff:0:01ff::1/64"}],
	    "dataDir": "/run/my-orchestrator/container-ipam-state"
	  }
	}`)
	c, err := parseConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	if c.dataDir != "/run/my-orchestrator/container-ipam-state/mynet" {
		t.Errorf("dataDir %s", c.dataDir)
	}
	pl, err := c.resolve()
	if err != nil {
		t.Fatal(err)
	}
	if len(pl.sets) != 2 || len(pl.sets[0]) != 2 || len(pl.routes) != 3 {
		t.Fatalf("sets %v routes %v", pl.sets, pl.routes)
	}
	if g := pl.sets[0][0].Gateway.String(); g != "10.10.0.254" {
		t.Errorf("gateway %s", g)
	}
	if s := pl.sets[1][0].Start.String(); s != "3ffe:ffff:0:1ff::10" {
		t.Errorf("v6 start %s", s)
	}
	// Default dataDir.
	c, err = parseConfig(netConfig(t, "0.3.1", `{"subnet":"10.0.0.0/24"}`, nil))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(c.dataDir) != DefaultDataDir {
		t.Errorf("default dataDir %s", c.dataDir)
	}
}

func TestConfigNodeSubnetPath(t *testing.T) {
	c, err := parseConfig(netConfig(t, "1.0.0", `{"nodeSubnet":true}`, nil))
	if err != nil {
		t.Fatal(err)
	}
	if got := c.subnetFilePath(); got != subnetfile.DefaultPath {
		t.Errorf("nodeSubnet path %q", got)
	}
	c, _ = parseConfig(netConfig(t, "1.0.0", `{"subnetFile":"/x/y.json","nodeSubnet":true}`, nil))
	if got := c.subnetFilePath(); got != "/x/y.json" {
		t.Errorf("subnetFile path %q", got)
	}
	c, _ = parseConfig(netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24"}`, nil))
	if got := c.subnetFilePath(); got != "" {
		t.Errorf("no subnet file expected, got %q", got)
	}
}

func TestConfigResolvConfAndDNS(t *testing.T) {
	rc := filepath.Join(t.TempDir(), "resolv.conf")
	if err := os.WriteFile(rc, []byte("# comment\nnameserver 10.96.0.10\nnameserver 1.1.1.1\nsearch a.svc b.svc\ndomain cluster.local\noptions ndots:5\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, _ := newFake()
	r := mustAdd(t, p, cmdArgs("c1", "eth0", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24","resolvConf":"`+rc+`"}`, nil)))
	d := r.DNS
	if len(d.Nameservers) != 2 || d.Nameservers[0] != "10.96.0.10" || d.Domain != "cluster.local" ||
		len(d.Search) != 2 || len(d.Options) != 1 || d.Options[0] != "ndots:5" {
		t.Errorf("DNS %+v", d)
	}
	r = mustAdd(t, p, cmdArgs("c1", "eth0", netConfig(t, "1.0.0", `{"subnet":"10.0.0.0/24"}`,
		map[string]any{"dns": map[string]any{"nameservers": []string{"9.9.9.9"}}})))
	if len(r.DNS.Nameservers) != 1 || r.DNS.Nameservers[0] != "9.9.9.9" {
		t.Errorf("network dns not carried: %+v", r.DNS)
	}
}
