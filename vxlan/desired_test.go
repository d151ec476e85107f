package vxlan

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/backend"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func local() backend.LocalNode {
	return backend.LocalNode{Name: "n1", UnderlayIP: addr("172.18.0.2"), UnderlayLink: "eth0", UnderlayMTU: 1500,
		PodCIDR: pfx("10.244.1.0/24"), Network: pfx("10.244.0.0/16")}
}

func peer(name, ip, mac string, cidrs ...string) backend.Peer {
	p := backend.Peer{Name: name, UnderlayIP: addr(ip), Backends: []string{"vxlan"}, Attrs: map[string]string{AnnoVTEPMAC: mac}}
	for _, c := range cidrs {
		p.PodCIDRs = append(p.PodCIDRs, pfx(c))
	}
	return p
}

func TestDesired(t *testing.T) {
	peers := []backend.Peer{
		peer("n3", "172.18.0.4", "02:00:00:00:00:03", "10.244.3.0/24"),
		peer("n1", "172.18.0.2", "02:00:00:00:00:01", "10.244.1.0/24"), // ourselves
		peer("n2", "172.18.0.3", "02:00:00:00:00:02", "10.244.2.0/24"),
	}
	st, probs := Desired(local(), peers)
	if len(probs) != 0 {
		t.Fatalf("problems: %v", probs)
	}
	wantFDB := map[string]netip.Addr{"02:00:00:00:00:02": addr("172.18.0.3"), "02:00:00:00:00:03": addr("172.18.0.4")}
	if len(st.FDB) != 2 || st.FDB["02:00:00:00:00:02"] != wantFDB["02:00:00:00:00:02"] || st.FDB["02:00:00:00:00:03"] != wantFDB["02:00:00:00:00:03"] {
		t.Fatalf("fdb %v", st.FDB)
	}
	if len(st.Neigh) != 2 || st.Neigh[addr("10.244.2.0")] != "02:00:00:00:00:02" || st.Neigh[addr("10.244.3.0")] != "02:00:00:00:00:03" {
		t.Fatalf("neigh %v", st.Neigh)
	}
	if len(st.Routes) != 2 || st.Routes[pfx("10.244.2.0/24")] != addr("10.244.2.0") || st.Routes[pfx("10.244.3.0/24")] != addr("10.244.3.0") {
		t.Fatalf("routes %v", st.Routes)
	}
}

func TestDesiredProblems(t *testing.T) {
	udpOnly := peer("p-udp", "172.18.0.9", "02:00:00:00:00:09", "10.244.9.0/24")
	udpOnly.Backends = []string{"udp"}
	cases := []struct {
		name string
		p    []backend.Peer
		want string
	}{
		{"no vxlan", []backend.Peer{udpOnly}, "does not decapsulate vxlan"},
		{"bad mac", []backend.Peer{peer("p", "172.18.0.9", "zz", "10.244.9.0/24")}, "invalid or missing"},
		{"no mac", []backend.Peer{peer("p", "172.18.0.9", "", "10.244.9.0/24")}, "invalid or missing"},
		{"ipv6 underlay", []backend.Peer{peer("p", "fd00::1", "02:00:00:00:00:09", "10.244.9.0/24")}, "invalid underlay"},
		{"own underlay", []backend.Peer{peer("p", "172.18.0.2", "02:00:00:00:00:09", "10.244.9.0/24")}, "is this node's"},
		{"outside network", []backend.Peer{peer("p", "172.18.0.9", "02:00:00:00:00:09", "10.99.9.0/24")}, "outside the cluster network"},
		{"overlaps own", []backend.Peer{peer("p", "172.18.0.9", "02:00:00:00:00:09", "10.244.1.0/25")}, "overlaps this node's"},
		{"no cidr", []backend.Peer{peer("p", "172.18.0.9", "02:00:00:00:00:09")}, "no pod CIDR yet"},
		{"dup cidr", []backend.Peer{peer("a", "172.18.0.8", "02:00:00:00:00:08", "10.244.9.0/24"), peer("b", "172.18.0.9", "02:00:00:00:00:09", "10.244.9.0/24")}, "b: pod CIDR 10.244.9.0/24 overlaps a's"},
		{"dup mac", []backend.Peer{peer("a", "172.18.0.8", "02:00:00:00:00:08", "10.244.8.0/24"), peer("b", "172.18.0.9", "02:00:00:00:00:08", "10.244.9.0/24")}, "b: VTEP MAC 02:00:00:00:00:08 already used by a"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			st, probs := Desired(local(), tc.p)
			if len(probs) != 1 || !strings.Contains(probs[0].String(), tc.want) {
				t.Fatalf("problems %v, want one containing %q", probs, tc.want)
			}
			// The offending peer contributes nothing; a first claimant keeps its entries.
			if len(tc.p) == 1 && (len(st.FDB) != 0 || len(st.Neigh) != 0 || len(st.Routes) != 0) {
				t.Fatalf("bad peer produced entries: %+v", st)
			}
			if len(tc.p) == 2 && (len(st.FDB) != 1 || len(st.Routes) != 1) {
				t.Fatalf("first claimant lost its entries: %+v", st)
			}
		})
	}
}

func TestDesiredIgnoresIPv6CIDRAndMultipleCIDRs(t *testing.T) {
	p := peer("n2", "172.18.0.3", "02:00:00:00:00:02", "10.244.2.0/24", "fd00:10:244:2::/64", "10.244.20.0/24")
	st, probs := Desired(local(), []backend.Peer{p})
	if len(probs) != 0 || len(st.FDB) != 1 || len(st.Routes) != 2 || len(st.Neigh) != 2 {
		t.Fatalf("state %+v problems %v", st, probs)
	}
}

func TestDecodeConfig(t *testing.T) {
	c, err := DecodeConfig(json.RawMessage(`{"type":"vxlan"}`))
	if err != nil || c.VNI != 1 || c.Port != 8472 || c.MTU != 0 {
		t.Fatalf("defaults: %+v %v", c, err)
	}
	c, err = DecodeConfig(json.RawMessage(`{"type":"vxlan","vni":42,"port":4789,"mtu":1400}`))
	if err != nil || c.VNI != 42 || c.Port != 4789 || c.MTU != 1400 {
		t.Fatalf("full: %+v %v", c, err)
	}
	for in, want := range map[string]string{
		`{"type":"vxlan","vni":0}`:              "vni 0",
		`{"type":"vxlan","vni":16777216}`:       "vni 16777216",
		`{"type":"vxlan","port":0}`:             "port 0",
		`{"type":"vxlan","port":70000}`:         "port 70000",
		`{"type":"vxlan","mtu":100}`:            "mtu 100",
		`{"type":"vxlan","directRouting":true}`: "unknown field",
		`{"type":"vxlan","vni":"1"}`:            "cannot unmarshal",
		`{"type":"udp"}`:                        "is not",
	} {
		if _, err := DecodeConfig(json.RawMessage(in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: got %v, want %q", in, err, want)
		}
	}
}

func TestBackendConverges(t *testing.T) {
	ctx := context.Background()
	k := NewFake(map[string]int{"eth0": 1500})
	b := New(Config{VNI: 1, Port: 8472}, k, k.Routes(), nil, slog.Default())
	pub, err := b.Start(ctx, local())
	if err != nil {
		t.Fatal(err)
	}
	if pub.MTU != 1450 || pub.Attrs[AnnoVTEPMAC] == "" {
		t.Fatalf("published %+v", pub)
	}
	if k.Up() {
		t.Fatal("the device Start created is up before Apply put the guard in place")
	}
	peers := []backend.Peer{peer("n2", "172.18.0.3", "02:00:00:00:00:22", "10.244.2.0/24"), peer("n3", "172.18.0.4", "02:00:00:00:00:33", "10.244.3.0/24")}
	res, err := b.Apply(ctx, peers)
	if err != nil || res.Peers != 2 || res.Changes != 7 || !k.Up() { // up, then 2*(fdb, neigh, route); the address came with Start
		t.Fatalf("apply: %+v %v, up %v", res, err, k.Up())
	}
	want, _ := Desired(local(), peers)
	if !equalState(k.Snapshot(), want) {
		t.Fatalf("kernel %+v, want %+v", k.Snapshot(), want)
	}
	// Converged: a second apply writes nothing.
	w := k.Writes
	if res, err := b.Apply(ctx, peers); err != nil || res.Changes != 0 || k.Writes != w {
		t.Fatalf("second apply changed %d (%d writes): %v", res.Changes, k.Writes-w, err)
	}
	// Drift: a hand-deleted route and FDB entry come back; a foreign entry goes.
	k.RemoveRoute(pfx("10.244.2.0/24"))
	_ = k.DelFDB(b.dev, FDBEntry{MAC: "02:00:00:00:00:33"})
	_ = k.SetNeigh(b.dev, NeighEntry{IP: addr("10.244.77.0"), MAC: "02:00:00:00:00:77"})
	if res, err := b.Apply(ctx, peers); err != nil || res.Changes != 3 || !equalState(k.Snapshot(), want) {
		t.Fatalf("repair: %+v %v kernel %+v", res, err, k.Snapshot())
	}
	// Peer removed: its entries go.
	if _, err := b.Apply(ctx, peers[:1]); err != nil {
		t.Fatal(err)
	}
	want1, _ := Desired(local(), peers[:1])
	if !equalState(k.Snapshot(), want1) || len(k.Snapshot().FDB) != 1 {
		t.Fatalf("after removal %+v", k.Snapshot())
	}
	// Restart: a new backend adopts the device (same MAC) without writes.
	if err := b.Stop(ctx, false); err != nil || !k.HasDevice() {
		t.Fatalf("stop without cleanup removed the device: %v", err)
	}
	w = k.Writes
	b2 := New(Config{VNI: 1, Port: 8472}, k, k.Routes(), nil, slog.Default())
	pub2, err := b2.Start(ctx, local())
	if err != nil || pub2.Attrs[AnnoVTEPMAC] != pub.Attrs[AnnoVTEPMAC] || k.Writes != w {
		t.Fatalf("restart: %+v %v, %d writes", pub2, err, k.Writes-w)
	}
	if res, err := b2.Apply(ctx, peers[:1]); err != nil || res.Changes != 0 {
		t.Fatalf("apply after adopt: %+v %v", res, err)
	}
	// A changed VNI replaces the device.
	b3 := New(Config{VNI: 2, Port: 8472}, k, k.Routes(), nil, slog.Default())
	pub3, err := b3.Start(ctx, local())
	if err != nil || pub3.Attrs[AnnoVTEPMAC] == pub.Attrs[AnnoVTEPMAC] {
		t.Fatalf("vni change did not recreate: %+v %v", pub3, err)
	}
	if err := b3.Stop(ctx, true); err != nil || k.HasDevice() {
		t.Fatalf("cleanup stop left the device: %v", err)
	}
}

func TestBackendMTU(t *testing.T) {
	k := NewFake(map[string]int{"eth0": 9000})
	l := local()
	l.UnderlayMTU = 0
	pub, err := New(Config{VNI: 1, Port: 8472}, k, k.Routes(), nil, slog.Default()).Start(context.Background(), l)
	if err != nil || pub.MTU != 8950 {
		t.Fatalf("derived mtu %d %v", pub.MTU, err)
	}
	pub, err = New(Config{VNI: 1, Port: 8472, MTU: 1300}, k, k.Routes(), nil, slog.Default()).Start(context.Background(), l)
	if err != nil || pub.MTU != 1300 {
		t.Fatalf("configured mtu %d %v", pub.MTU, err)
	}
}

func equalState(a, b State) bool {
	if len(a.FDB) != len(b.FDB) || len(a.Neigh) != len(b.Neigh) || len(a.Routes) != len(b.Routes) {
		return false
	}
	for k, v := range a.FDB {
		if b.FDB[k] != v {
			return false
		}
	}
	for k, v := range a.Neigh {
		if b.Neigh[k] != v {
			return false
		}
	}
	for k, v := range a.Routes {
		if b.Routes[k] != v {
			return false
		}
	}
	return true
}
