package bgp

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

func TestDecodeConfigDefaults(t *testing.T) {
	for _, mode := range []IPIPMode{IPIPAlways, IPIPCrossSubnet, IPIPNever} {
		c, err := DecodeConfig(json.RawMessage(`{"type":"bgp","ipipMode":"` + string(mode) + `"}`))
		if err != nil {
			t.Fatalf("%s: %v", mode, err)
		}
		want := BackendConfig{ASN: 64512, IPIPMode: mode, NodeToNodeMesh: true,
			ClusterID: netip.MustParseAddr("244.0.0.1"), Port: 179, GracefulRestartSeconds: 120}
		if c.ASN != want.ASN || c.IPIPMode != want.IPIPMode || c.NodeToNodeMesh != want.NodeToNodeMesh ||
			c.ClusterID != want.ClusterID || c.Port != want.Port || c.GracefulRestartSeconds != want.GracefulRestartSeconds || len(c.Peers) != 0 {
			t.Errorf("%s: got %+v, want %+v", mode, c, want)
		}
	}
	c, err := DecodeConfig(json.RawMessage(`{"type":"bgp"}`))
	if err != nil || c.IPIPMode != IPIPAlways {
		t.Errorf("type only: %+v %v, want ipipMode Always", c, err)
	}
}

func TestDecodeConfigFull(t *testing.T) {
	c, err := DecodeConfig(json.RawMessage(`{"type":"bgp","asNumber":65001,"ipipMode":"Never",
		"nodeToNodeMesh":false,"routeReflectorClusterID":"10.255.0.1","port":1179,"gracefulRestartSeconds":0,
		"peers":[{"peerIP":"192.0.2.1","asNumber":65100,"passwordSecretRef":{"name":"bgp","key":"tor"},
		"nodeSelector":{"rack":"a"},"acceptedPrefixes":["198.51.100.0/24","203.0.113.0/25"]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.ASN != 65001 || c.IPIPMode != IPIPNever || c.NodeToNodeMesh || c.ClusterID.String() != "10.255.0.1" ||
		c.Port != 1179 || c.GracefulRestartSeconds != 0 || len(c.Peers) != 1 {
		t.Fatalf("got %+v", c)
	}
	p := c.Peers[0]
	if p.Addr.String() != "192.0.2.1" || p.ASN != 65100 || *p.PasswordRef != (SecretRef{"bgp", "tor"}) ||
		p.NodeSelector["rack"] != "a" || len(p.Accepted) != 2 || p.Accepted[1].String() != "203.0.113.0/25" {
		t.Errorf("peer %+v", p)
	}
}

func TestDecodeConfigRejects(t *testing.T) {
	for in, field := range map[string]string{
		`{"type":"vxlan"}`:                                                            "type",
		`{}`:                                                                          "type",
		`{"type":"bgp","asnumber":1}`:                                                 "asnumber",
		`{"type":"bgp","asNumber":0}`:                                                 "asNumber",
		`{"type":"bgp","asNumber":4294967296}`:                                        "asNumber",
		`{"type":"bgp","asNumber":23456}`:                                             "asNumber",
		`{"type":"bgp","asNumber":"64512"}`:                                           "asNumber",
		`{"type":"bgp","ipipMode":"always"}`:                                          "ipipMode",
		`{"type":"bgp","ipipMode":""}`:                                                "ipipMode",
		`{"type":"bgp","nodeToNodeMesh":"yes"}`:                                       "nodeToNodeMesh",
		`{"type":"bgp","routeReflectorClusterID":1}`:                                  "routeReflectorClusterID",
		`{"type":"bgp","routeReflectorClusterID":"fd00::1"}`:                          "routeReflectorClusterID",
		`{"type":"bgp","port":0}`:                                                     "port",
		`{"type":"bgp","port":65536}`:                                                 "port",
		`{"type":"bgp","gracefulRestartSeconds":-1}`:                                  "gracefulRestartSeconds",
		`{"type":"bgp","gracefulRestartSeconds":4096}`:                                "gracefulRestartSeconds",
		`{"type":"bgp","peers":[{"peerIP":"x","asNumber":1}]}`:                        "peers[0].peerIP",
		`{"type":"bgp","peers":[{"peerIP":"192.0.2.1"}]}`:                             "peers[0].asNumber",
		`{"type":"bgp","peers":[{"peerIP":"192.0.2.1","asNumber":1,"password":"x"}]}`: "password",
		`{"type":"bgp","peers":[{"peerIP":"192.0.2.1","asNumber":1,"passwordSecretRef":{"name":"a"}}]}`:    "peers[0].passwordSecretRef",
		`{"type":"bgp","peers":[{"peerIP":"192.0.2.1","asNumber":1,"acceptedPrefixes":["10.0.0.1/8"]}]}`:   "peers[0].acceptedPrefixes[0]",
		`{"type":"bgp","peers":[{"peerIP":"192.0.2.1","asNumber":1,"acceptedPrefixes":["bad"]}]}`:          "peers[0].acceptedPrefixes[0]",
		`{"type":"bgp","peers":[{"peerIP":"192.0.2.1","asNumber":1,"acceptedPrefixes":["fd00::/8"]}]}`:     "peers[0].acceptedPrefixes[0]",
		`{"type":"bgp","peers":[{"peerIP":"192.0.2.1","asNumber":1},{"peerIP":"192.0.2.1","asNumber":2}]}`: "peers[1].peerIP",
		`{"type":"bgp"} {}`: "backend",
	} {
		_, err := DecodeConfig(json.RawMessage(in))
		if err == nil {
			t.Errorf("%s: accepted", in)
			continue
		}
		if !strings.Contains(err.Error(), field+":") {
			t.Errorf("%s: error %q does not name %s", in, err, field)
		}
	}
}
