package bgp

import (
	"net/netip"
	"testing"
)

func TestImportPolicy(t *testing.T) {
	nodes := testNodes(4, 1) // n1 reflector
	cfg := defaultCfg()
	cfg.Peers = []ExternalPeer{{Addr: netip.MustParseAddr("192.0.2.1"), ASN: 65100,
		Accepted: []netip.Prefix{netip.MustParsePrefix("198.51.100.0/24"), netip.MustParsePrefix("10.244.0.0/16")}},
		{Addr: netip.MustParseAddr("192.0.2.2"), ASN: 65101}}
	local := nodes[1] // n2, a client
	pol := PolicyFor(local, nodes, Sessions(local, nodes, cfg, nil))
	a := netip.MustParseAddr
	p := netip.MustParsePrefix
	rr, n3, n4, tor, tor2 := a("10.0.0.1"), a("10.0.0.3"), a("10.0.0.4"), a("192.0.2.1"), a("192.0.2.2")
	for _, tc := range []struct {
		name string
		c    Candidate
		want string
	}{
		{"owner's CIDR, reflected", Candidate{p("10.244.3.0/24"), n3, rr}, ""},
		{"reflector's own CIDR", Candidate{p("10.244.1.0/24"), rr, rr}, ""},
		{"direct from the owner", Candidate{p("10.244.4.0/24"), n4, n4}, ""},
		{"default route from a node", Candidate{p("0.0.0.0/0"), n3, n3}, RejectNotPodCIDR},
		{"another node's CIDR", Candidate{p("10.244.4.0/24"), n3, n3}, RejectWrongNextHop},
		{"reflector redirects a CIDR", Candidate{p("10.244.3.0/24"), rr, rr}, RejectWrongNextHop},
		{"more specific of a CIDR", Candidate{p("10.244.3.128/25"), n3, n3}, RejectNotPodCIDR},
		{"our own CIDR", Candidate{p("10.244.2.0/24"), n3, n3}, RejectOwnCIDR},
		{"foreign prefix from a node", Candidate{p("198.51.100.0/24"), n3, n3}, RejectNotPodCIDR},
		{"unknown sender", Candidate{p("10.244.3.0/24"), n3, a("10.9.9.9")}, RejectUnknownPeer},
		{"unspecified next hop", Candidate{p("10.244.3.0/24"), a("0.0.0.0"), n3}, RejectInvalidNextHop},
		{"external inside accepted", Candidate{p("198.51.100.0/25"), tor, tor}, ""},
		{"external equal to accepted", Candidate{p("198.51.100.0/24"), tor, tor}, ""},
		{"external default route", Candidate{p("0.0.0.0/0"), tor, tor}, RejectNotAccepted},
		{"external wider than accepted", Candidate{p("198.51.0.0/16"), tor, tor}, RejectNotAccepted},
		{"external pod CIDR inside accepted", Candidate{p("10.244.3.0/24"), tor, tor}, RejectInsidePodCIDR},
		{"external inside a pod CIDR", Candidate{p("10.244.3.0/26"), tor, tor}, RejectInsidePodCIDR},
		{"external around pod CIDRs", Candidate{p("10.244.0.0/16"), tor, tor}, ""},
		{"external with no acceptedPrefixes", Candidate{p("198.51.100.0/24"), tor2, tor2}, RejectNotAccepted},
	} {
		ok, why := pol.Accept(tc.c)
		if ok != (tc.want == "") || why != tc.want {
			t.Errorf("%s: got %v %q, want %q", tc.name, ok, why, tc.want)
		}
	}
}

func TestChooseSkipsRejectedBest(t *testing.T) {
	nodes := testNodes(3)
	pol := PolicyFor(nodes[0], nodes, Sessions(nodes[0], nodes, defaultCfg(), nil))
	a := netip.MustParseAddr
	pfx := netip.MustParsePrefix("10.244.3.0/24")
	// GoBGP's best path is the forged one from n2; the owner's comes second.
	r, rej, ok := choose(pol, []Candidate{{pfx, a("10.0.0.2"), a("10.0.0.2")}, {pfx, a("10.0.0.3"), a("10.0.0.3")}})
	if !ok || r.NextHop != a("10.0.0.3") || len(rej) != 1 || rej[0].Reason != RejectWrongNextHop {
		t.Errorf("got %+v %+v %v", r, rej, ok)
	}
}
