package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

type fakeValidator struct{}

func (fakeValidator) ValidateConfig(raw json.RawMessage) error {
	var c struct {
		Type string `json:"type"`
		VNI  int    `json:"vni"`
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return err
	}
	if c.VNI < 0 {
		return fmt.Errorf("vni %d: negative", c.VNI)
	}
	return nil
}

func backends() map[string]BackendValidator {
	return map[string]BackendValidator{"vxlan": fakeValidator{}}
}

func TestParseDefaults(t *testing.T) {
	nc, err := Parse([]byte(`{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if nc.Network != netip.MustParsePrefix("10.244.0.0/16") || nc.SubnetLen != 24 || nc.MTU != 0 || nc.CNIVersion != "1.0.0" || nc.Backend.Type != "vxlan" {
		t.Fatalf("unexpected defaults: %+v", nc)
	}
	if err := nc.Validate(backends(), Environment{NodeIPs: []netip.Addr{netip.MustParseAddr("172.18.0.2")}}); err != nil {
		t.Fatal(err)
	}
}

func TestParseFull(t *testing.T) {
	nc, err := Parse([]byte(`{"network":"10.10.0.0/16","subnetLen":26,"mtu":1400,"cniVersion":"1.1.0","backend":{"type":"vxlan","vni":7,"port":4789}}`))
	if err != nil {
		t.Fatal(err)
	}
	if nc.SubnetLen != 26 || nc.MTU != 1400 || nc.CNIVersion != "1.1.0" {
		t.Fatalf("got %+v", nc)
	}
	var raw map[string]any
	if err := json.Unmarshal(nc.Backend.Raw, &raw); err != nil || raw["vni"] != float64(7) {
		t.Fatalf("backend section not kept raw: %s", nc.Backend.Raw)
	}
}

func TestParseErrors(t *testing.T) {
	cases := []struct {
		name, in, field, want string
	}{
		{"empty", ``, "", "empty"},
		{"invalid json", `{"network":`, "", "invalid JSON"},
		{"not object", `[1,2]`, "", "invalid JSON"},
		{"trailing", `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}} {}`, "", "trailing data"},
		{"unknown key", `{"network":"10.244.0.0/16","subnetMin":"10.244.1.0","backend":{"type":"vxlan"}}`, "", "unknown field"},
		{"missing network", `{"backend":{"type":"vxlan"}}`, "network", "required"},
		{"bad network", `{"network":"10.244.0.0","backend":{"type":"vxlan"}}`, "network", "not a CIDR"},
		{"network type", `{"network":5,"backend":{"type":"vxlan"}}`, "", "invalid JSON"},
		{"ipv6 network", `{"network":"fd00::/48","backend":{"type":"vxlan"}}`, "network", "only IPv4"},
		{"host bits", `{"network":"10.244.1.0/16","backend":{"type":"vxlan"}}`, "network", "host bits"},
		{"too big", `{"network":"10.0.0.0/7","backend":{"type":"vxlan"}}`, "network", "between 8 and 28"},
		{"too small", `{"network":"10.0.0.0/29","backend":{"type":"vxlan"}}`, "network", "between 8 and 28"},
		{"loopback", `{"network":"127.0.0.0/16","backend":{"type":"vxlan"}}`, "network", "not a unicast"},
		{"multicast", `{"network":"224.0.0.0/16","backend":{"type":"vxlan"}}`, "network", "not a unicast"},
		{"subnetLen short", `{"network":"10.244.0.0/16","subnetLen":16,"backend":{"type":"vxlan"}}`, "subnetLen", "longer than"},
		{"subnetLen long", `{"network":"10.244.0.0/16","subnetLen":31,"backend":{"type":"vxlan"}}`, "subnetLen", "at most 30"},
		{"subnetLen many", `{"network":"10.0.0.0/8","subnetLen":28,"backend":{"type":"vxlan"}}`, "subnetLen", "65536"},
		{"mtu low", `{"network":"10.244.0.0/16","mtu":500,"backend":{"type":"vxlan"}}`, "mtu", "576..65535"},
		{"mtu high", `{"network":"10.244.0.0/16","mtu":70000,"backend":{"type":"vxlan"}}`, "mtu", "576..65535"},
		{"cniVersion", `{"network":"10.244.0.0/16","cniVersion":"1.2.0","backend":{"type":"vxlan"}}`, "cniVersion", "must be one of"},
		{"no backend", `{"network":"10.244.0.0/16"}`, "backend", "required"},
		{"null backend", `{"network":"10.244.0.0/16","backend":null}`, "backend", "required"},
		{"backend not object", `{"network":"10.244.0.0/16","backend":"vxlan"}`, "backend", "must be an object"},
		{"no backend type", `{"network":"10.244.0.0/16","backend":{"vni":1}}`, "backend.type", "required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.in))
			if err == nil {
				t.Fatalf("accepted %s", tc.in)
			}
			var ce *Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v is not a *config.Error", err)
			}
			if ce.Field != tc.field || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q (field %q), want field %q containing %q", err, ce.Field, tc.field, tc.want)
			}
		})
	}
}

func TestValidateErrors(t *testing.T) {
	env := Environment{NodeIPs: []netip.Addr{netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("172.18.0.3")}}
	cases := []struct {
		name, in, field, want string
		env                   Environment
	}{
		{"unknown backend", `{"network":"10.244.0.0/16","backend":{"type":"carrier-pigeon"}}`, "backend.type", "unknown backend \"carrier-pigeon\" (known: [vxlan])", env},
		{"backend decode", `{"network":"10.244.0.0/16","backend":{"type":"vxlan","vnii":1}}`, "backend", "unknown field", env},
		{"backend value", `{"network":"10.244.0.0/16","backend":{"type":"vxlan","vni":-1}}`, "backend", "negative", env},
		{"overlaps nodes", `{"network":"172.16.0.0/12","backend":{"type":"vxlan"}}`, "network", "overlaps the node network (node address 172.18.0.2)", env},
		{"podCIDR outside", `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`, "network", "does not contain the node's spec.podCIDR 10.245.1.0/24",
			Environment{NodePodCIDR: netip.MustParsePrefix("10.245.1.0/24")}},
		{"podCIDR larger", `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`, "network", "does not contain",
			Environment{NodePodCIDR: netip.MustParsePrefix("10.0.0.0/8")}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			nc, err := Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			err = nc.Validate(backends(), tc.env)
			var ce *Error
			if !errors.As(err, &ce) || ce.Field != tc.field || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want field %q containing %q", err, tc.field, tc.want)
			}
		})
	}
	// The node's own podCIDR inside the network is fine.
	nc, _ := Parse([]byte(`{"network":"10.244.0.0/16","backend":{"type":"vxlan"}}`))
	if err := nc.Validate(backends(), Environment{NodePodCIDR: netip.MustParsePrefix("10.244.3.0/24")}); err != nil {
		t.Fatal(err)
	}
}

func TestEqual(t *testing.T) {
	a, _ := Parse([]byte(`{"network":"10.244.0.0/16","backend":{"type":"vxlan","vni":1,"port":8472}}`))
	b, _ := Parse([]byte(`{ "backend": {"port":8472, "vni":1, "type":"vxlan"}, "network":"10.244.0.0/16"}`))
	c, _ := Parse([]byte(`{"network":"10.244.0.0/16","backend":{"type":"vxlan","vni":2,"port":8472}}`))
	if !a.Equal(b) {
		t.Fatal("equal configs differ")
	}
	if a.Equal(c) {
		t.Fatal("different backend sections compare equal")
	}
}

// The bandwidth section stays raw for the shaper; a change of it is a
// change of the configuration.
func TestBandwidthSectionRaw(t *testing.T) {
	base := `{"network":"10.244.0.0/16","backend":{"type":"vxlan"}`
	a, err := Parse([]byte(base + `,"bandwidth":{"podCeil":"1G"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if string(a.Bandwidth) != `{"podCeil":"1G"}` {
		t.Fatalf("bandwidth %s", a.Bandwidth)
	}
	b, _ := Parse([]byte(base + `,"bandwidth":{"podCeil":"2G"}}`))
	none, _ := Parse([]byte(base + `}`))
	if a.Equal(b) || a.Equal(none) || none.Bandwidth != nil || !a.Equal(a) {
		t.Fatalf("Equal: a=%s b=%s none=%s", a.Bandwidth, b.Bandwidth, none.Bandwidth)
	}
}
