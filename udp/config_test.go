package udp

import (
	"encoding/json"
	"strings"
	"testing"
)

func TestDecodeConfig(t *testing.T) {
	for _, c := range []struct {
		raw     string
		want    Config
		wantErr string
	}{
		{raw: ``, want: Config{Port: 8285}},
		{raw: `{"type":"udp"}`, want: Config{Port: 8285}},
		{raw: `{"type":"udp","port":8285}`, want: Config{Port: 8285}},
		{raw: `{"type":"udp","port":9000,"mtu":1400}`, want: Config{Port: 9000, MTU: 1400}},
		{raw: `{"type":"udp","vni":1}`, wantErr: `unknown field "vni"`},
		{raw: `{"type":"vxlan"}`, wantErr: `type "vxlan" is not "udp"`},
		{raw: `{"port":0}`, wantErr: "port 0: must be 1..65535"},
		{raw: `{"port":70000}`, wantErr: "port 70000"},
		{raw: `{"port":"8285"}`, wantErr: "port"},
		{raw: `{"mtu":500}`, wantErr: "mtu 500: must be 0"},
		{raw: `{"mtu":65508}`, wantErr: "mtu 65508"},
	} {
		got, err := DecodeConfig(json.RawMessage(c.raw))
		if c.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), c.wantErr) {
				t.Errorf("%s: err %v, want %q", c.raw, err, c.wantErr)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %+v, %v; want %+v", c.raw, got, err, c.want)
		}
	}
	if m := (Config{}).DeviceMTU(1500); m != 1472 {
		t.Errorf("default device MTU %d, want 1472", m)
	}
	if m := (Config{MTU: 1400}).DeviceMTU(9000); m != 1400 {
		t.Errorf("configured device MTU %d", m)
	}
}
