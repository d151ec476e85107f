package vxlan

import (
	"net/netip"
	"slices"

	"github.com/weftnet/weft/internal/encapguard"
)

// guardSpec turns the desired entries into the encapsulation guard's
// state: every peer the backend programs is a known sender, owning exactly
// the pod CIDRs routed to it, and may send only to local, this node's pod
// CIDR. Pure.
func guardSpec(cfg Config, local netip.Prefix, st State) encapguard.Spec {
	byIP := map[netip.Addr]*encapguard.Peer{}
	for c, gw := range st.Routes {
		ip, ok := st.FDB[st.Neigh[gw]]
		if !ok {
			continue
		}
		p := byIP[ip]
		if p == nil {
			p = &encapguard.Peer{Name: ip.String(), UnderlayIP: ip}
			byIP[ip] = p
		}
		p.PodCIDRs = append(p.PodCIDRs, c)
	}
	e := encapguard.VXLAN(cfg.Port)
	e.Kind = cfg.GuardKind()
	s := encapguard.Spec{Encap: e, PodIface: encapguard.DefaultPodIface, Local: []netip.Prefix{local.Masked()}}
	for _, p := range byIP {
		s.Peers = append(s.Peers, *p)
	}
	slices.SortFunc(s.Peers, func(a, b encapguard.Peer) int { return a.UnderlayIP.Compare(b.UnderlayIP) })
	return s
}
