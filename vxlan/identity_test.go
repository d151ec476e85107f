package vxlan

import (
	"net/netip"
	"testing"

	"github.com/weftnet/weft/internal/backend"
)

// Each VNI/port is its own identity with its own device, guard, MAC
// annotation; the default keeps the names weft always had.
func TestIdentityNames(t *testing.T) {
	for _, c := range []struct {
		cfg                    Config
		id, dev, kind, annoMAC string
	}{
		{Config{VNI: 1, Port: 8472}, "vxlan", "weft.vxlan", "vxlan", AnnoVTEPMAC},
		{Config{VNI: 7, Port: 4789}, "vxlan/7/4789", "weft.vx7.4789", "vx7-4789", AnnoVTEPMAC + "-7-4789"},
		{Config{VNI: 16777215, Port: 65535}, "vxlan/16777215/65535", "", "vx16777215-65535", AnnoVTEPMAC + "-16777215-65535"},
	} {
		if c.cfg.Identity() != c.id || c.cfg.GuardKind() != c.kind || c.cfg.MACAnnotation() != c.annoMAC {
			t.Errorf("%+v: %s %s %s", c.cfg, c.cfg.Identity(), c.cfg.GuardKind(), c.cfg.MACAnnotation())
		}
		if d := c.cfg.Device(); (c.dev != "" && d != c.dev) || len(d) > 15 {
			t.Errorf("%+v: device %q", c.cfg, d)
		}
		if back, ok := ParseIdentity(c.id); !ok || back != c.cfg {
			t.Errorf("ParseIdentity(%s) = %+v %v", c.id, back, ok)
		}
	}
	for _, bad := range []string{"vxlan/7", "udp", "vxlan/x/1", "vxlan/1/8472"} {
		if _, ok := ParseIdentity(bad); ok {
			t.Errorf("ParseIdentity(%q) accepted", bad)
		}
	}
}

// The guard admits a peer that does not announce the identity yet (it may
// send it as soon as it sees this node announce it) for its own pod CIDR.
func TestGuardAdmitsPeersNotYetAnnouncing(t *testing.T) {
	cfg := Config{VNI: 7, Port: 4789}
	l := backend.LocalNode{Name: "n1", UnderlayIP: netip.MustParseAddr("172.18.0.2"), PodCIDR: netip.MustParsePrefix("10.244.1.0/24"),
		Network: netip.MustParsePrefix("10.244.0.0/16")}
	p := backend.Peer{Name: "n2", UnderlayIP: netip.MustParseAddr("172.18.0.3"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")},
		Backends: []string{"vxlan"}, Attrs: map[string]string{AnnoVTEPMAC: "02:00:00:00:00:22"}}
	if st, _ := DesiredFor(cfg, l, []backend.Peer{p}); len(st.Routes) != 0 {
		t.Fatalf("routed through vxlan/7/4789 to a peer that does not announce it: %v", st.Routes)
	}
	s := guardSpec(cfg, l.PodCIDR, admitted(cfg, l, []backend.Peer{p}))
	if len(s.Peers) != 1 || s.Peers[0].UnderlayIP != p.UnderlayIP || len(s.Peers[0].PodCIDRs) != 1 || s.Peers[0].PodCIDRs[0] != p.PodCIDRs[0] ||
		s.Encap.Kind != "vx7-4789" || s.Encap.Port != 4789 {
		t.Fatalf("guard spec %+v", s)
	}
}
