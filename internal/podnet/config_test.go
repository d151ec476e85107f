package podnet

import (
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
)

func TestLoadConfDefaults(t *testing.T) {
	c, err := LoadConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"weft","ipam":{"type":"weft-ipam"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != DefaultBridge || !c.Hairpin() || !c.Gateway() || c.IsDefaultGateway || c.IPMasq || c.MTU != 0 {
		t.Fatalf("defaults: %+v", c)
	}
	c, err = LoadConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"weft","bridge":"br9","hairpinMode":false,
		"isGateway":false,"mtu":1400,"ipMasq":true,"ipam":{"type":"host-local"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Bridge != "br9" || c.Hairpin() || c.Gateway() || c.MTU != 1400 || !c.IPMasq {
		t.Fatalf("explicit: %+v", c)
	}
	c, err = LoadConf([]byte(`{"name":"n","ipam":{"type":"weft-ipam","subnetFile":"/x/s.json"}}`))
	if err != nil || c.SubnetFile != "/x/s.json" {
		t.Fatalf("subnetFile from ipam: %q, %v", c.SubnetFile, err)
	}
}

func TestLoadConfErrors(t *testing.T) {
	cases := []struct {
		name, conf string
		code       uint
		field      string
	}{
		{"malformed", `{"cniVersion":`, types.ErrDecodingFailure, ""},
		{"mtu type", `{"name":"n","mtu":"x","ipam":{"type":"a"}}`, types.ErrDecodingFailure, "mtu"},
		{"hairpin type", `{"name":"n","hairpinMode":"yes","ipam":{"type":"a"}}`, types.ErrDecodingFailure, "hairpinMode"},
		{"mtu range", `{"name":"n","mtu":70000,"ipam":{"type":"a"}}`, types.ErrInvalidNetworkConfig, "mtu"},
		{"no ipam", `{"name":"n"}`, types.ErrInvalidNetworkConfig, "ipam.type"},
		{"ipam path", `{"name":"n","ipam":{"type":"../x"}}`, types.ErrInvalidNetworkConfig, "ipam.type"},
		{"bridge long", `{"name":"n","bridge":"0123456789abcdef","ipam":{"type":"a"}}`, types.ErrInvalidNetworkConfig, "bridge"},
		{"bridge slash", `{"name":"n","bridge":"a/b","ipam":{"type":"a"}}`, types.ErrInvalidNetworkConfig, "bridge"},
		{"bridge prefix", `{"name":"n","bridge":"wv0","ipam":{"type":"a"}}`, types.ErrInvalidNetworkConfig, "bridge"},
		{"vlan", `{"name":"n","vlan":3,"ipam":{"type":"a"}}`, types.ErrUnsupportedField, "vlan"},
		{"gateway conflict", `{"name":"n","isGateway":false,"isDefaultGateway":true,"ipam":{"type":"a"}}`, types.ErrInvalidNetworkConfig, "isDefaultGateway"},
	}
	for _, tc := range cases {
		_, err := LoadConf([]byte(tc.conf))
		var te *types.Error
		if !errors.As(err, &te) || te.Code != tc.code || !strings.Contains(te.Msg, tc.field) {
			t.Errorf("%s: got %v, want code %d naming %q", tc.name, err, tc.code, tc.field)
		}
	}
}

func TestHostVethName(t *testing.T) {
	a := HostVethName("abc", "eth0")
	if len(a) != 15 || !strings.HasPrefix(a, HostVethPrefix) {
		t.Fatalf("name %q", a)
	}
	if a != HostVethName("abc", "eth0") {
		t.Fatal("not deterministic")
	}
	if a == HostVethName("abc", "eth1") || a == HostVethName("abd", "eth0") || HostVethName("ab", "ceth0") == HostVethName("abc", "eth0") {
		t.Fatal("collision between different attachments")
	}
}

func ipc(s string, gw string) *current.IPConfig {
	ip, n, _ := net.ParseCIDR(s)
	n.IP = ip
	c := &current.IPConfig{Address: *n}
	if gw != "" {
		c.Gateway = net.ParseIP(gw)
	}
	return c
}

func TestGatewaysAndRoutes(t *testing.T) {
	conf := &NetConf{IsDefaultGateway: true}
	ips := []*current.IPConfig{ipc("10.1.2.7/24", ""), ipc("fd00::5/64", "fd00::1")}
	fillGateways(conf, ips)
	if ips[0].Gateway.String() != "10.1.2.1" || ips[1].Gateway.String() != "fd00::1" {
		t.Fatalf("gateways %v %v", ips[0].Gateway, ips[1].Gateway)
	}
	_, ipamRoute, _ := net.ParseCIDR("0.0.0.0/0")
	routes := podRoutes(conf, &current.Result{IPs: ips, Routes: []*types.Route{{Dst: *ipamRoute}}})
	if len(routes) != 2 || routes[1].Dst.String() != "::/0" || !routes[1].GW.Equal(net.ParseIP("fd00::1")) {
		t.Fatalf("routes %v", routes)
	}
	if r := podRoutes(&NetConf{}, &current.Result{IPs: ips}); len(r) != 0 {
		t.Fatalf("routes without isDefaultGateway: %v", r)
	}
	f := false
	noGw := &NetConf{IsGateway: &f}
	ips = []*current.IPConfig{ipc("10.1.2.7/24", "")}
	fillGateways(noGw, ips)
	if ips[0].Gateway != nil {
		t.Fatal("gateway filled although isGateway is false")
	}
}

func TestRoutePresent(t *testing.T) {
	_, dflt, _ := net.ParseCIDR("0.0.0.0/0")
	_, n10, _ := net.ParseCIDR("10.0.0.0/8")
	gw := net.ParseIP("10.1.2.1")
	have := []netlink.Route{{Dst: n10, Gw: gw}}
	if routePresent(have, &types.Route{Dst: *dflt, GW: gw}) {
		t.Fatal("default route found in a table without one")
	}
	if !routePresent(have, &types.Route{Dst: *n10, GW: gw}) || !routePresent(have, &types.Route{Dst: *n10}) {
		t.Fatal("10/8 not found")
	}
	if routePresent(have, &types.Route{Dst: *n10, GW: net.ParseIP("10.1.2.9")}) {
		t.Fatal("wrong gateway matched")
	}
	have = append(have, netlink.Route{Dst: nil, Gw: gw})
	if !routePresent(have, &types.Route{Dst: *dflt, GW: gw}) {
		t.Fatal("default route with nil Dst not recognised")
	}
}
