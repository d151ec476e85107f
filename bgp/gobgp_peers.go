package bgp

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

var familyV4 = &api.Family{Afi: api.Family_AFI_IP, Safi: api.Family_SAFI_UNICAST}

// SetPeers implements Speaker. A peer whose settings changed is deleted and
// added again, so its session is re-formed with the new settings. A session
// that is removed closes at once (its peer withdraws what it learned over
// it): for make-before-break, call SetPeers with the old and new sessions
// together, wait until PeerStates shows the new ones established, then
// with the new ones only.
func (g *GoBGP) SetPeers(ctx context.Context, peers []Peer) error {
	want := map[netip.Addr]Peer{}
	for _, p := range peers {
		if !p.Addr.IsValid() || p.ASN == 0 {
			return fmt.Errorf("bgp peers: invalid peer %v AS %d", p.Addr, p.ASN)
		}
		if p.Password != "" && listenersAreMPTCP() {
			return fmt.Errorf("bgp peers: %v has a TCP-MD5 password, but this binary listens with MPTCP, "+
				"where TCP-MD5 cannot be set (build with godebug multipathtcp=0)", p.Addr)
		}
		if _, dup := want[p.Addr]; dup {
			return fmt.Errorf("bgp peers: %v listed twice", p.Addr)
		}
		want[p.Addr] = p
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.running {
		return errors.New("bgp peers: speaker not started")
	}
	// The external set covers old and new external peers while sessions
	// change, and only the new ones afterwards.
	if err := g.setExternalPeers(ctx, externals(g.peers, want)); err != nil {
		return err
	}
	var errs []error
	// New peers first, so a session that moves (a new reflector in, the
	// old one out) is being formed before the old one closes.
	for addr, p := range want {
		if _, ok := g.peers[addr]; !ok {
			errs = append(errs, g.addPeer(ctx, p))
		}
	}
	for _, addr := range slices.Collect(maps.Keys(g.peers)) {
		p, keep := want[addr]
		if keep && p == g.peers[addr] {
			continue
		}
		if err := g.srv.DeletePeer(ctx, &api.DeletePeerRequest{Address: addr.String()}); err != nil {
			errs = append(errs, fmt.Errorf("delete peer %v: %w", addr, err))
			continue
		}
		delete(g.peers, addr)
		if keep {
			errs = append(errs, g.addPeer(ctx, p))
		}
	}
	errs = append(errs, g.setExternalPeers(ctx, externals(want)))
	signal(g.dirty)
	return errors.Join(errs...)
}

func (g *GoBGP) addPeer(ctx context.Context, p Peer) error {
	if err := g.srv.AddPeer(ctx, &api.AddPeerRequest{Peer: g.apiPeer(p)}); err != nil {
		return fmt.Errorf("add peer %v AS %d: %w", p.Addr, p.ASN, err)
	}
	g.peers[p.Addr] = p
	return nil
}

func (g *GoBGP) apiPeer(p Peer) *api.Peer {
	port := uint32(p.Port)
	if port == 0 {
		port = DefaultPort
	}
	hold := uint64(g.cfg.HoldTime.Seconds())
	ap := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Addr.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{ConnectRetry: uint64(g.cfg.ConnectRetry.Seconds()),
			HoldTime: hold, KeepaliveInterval: max(hold/3, 1)}},
		Transport: &api.Transport{RemotePort: port, PassiveMode: p.Passive},
		AfiSafis:  []*api.AfiSafi{{Config: &api.AfiSafiConfig{Family: familyV4, Enabled: true}}},
	}
	if g.cfg.ListenAddr.IsValid() {
		ap.Transport.LocalAddress = g.cfg.ListenAddr.String()
	}
	if p.RouteReflectorClient {
		ap.RouteReflector = &api.RouteReflector{RouteReflectorClient: true,
			RouteReflectorClusterId: p.ClusterID.String()}
	}
	if gr := uint32(g.cfg.GracefulRestart.Seconds()); gr > 0 {
		// Helper and restarting speaker, but never "locally restarting":
		// that would hold back our advertisements until every peer sent
		// End-of-RIB or the deferral timer fired (kube-router#1323).
		ap.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: gr}
		ap.AfiSafis[0].MpGracefulRestart = &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: true}}
	}
	return ap
}

// Advertise implements Speaker.
func (g *GoBGP) Advertise(ctx context.Context, prefixes []netip.Prefix) error {
	want := map[netip.Prefix]bool{}
	for _, p := range prefixes {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("bgp advertise: %v is not an IPv4 prefix", p)
		}
		want[p.Masked()] = true
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.running {
		return errors.New("bgp advertise: speaker not started")
	}
	var errs []error
	for p, path := range g.adv {
		if want[p] {
			continue
		}
		if err := g.srv.DeletePath(ctx, &api.DeletePathRequest{Family: familyV4, Path: path}); err != nil {
			errs = append(errs, fmt.Errorf("withdraw %v: %w", p, err))
			continue
		}
		delete(g.adv, p)
	}
	for p := range want {
		if _, ok := g.adv[p]; ok {
			continue
		}
		path, err := localPath(p, g.cfg.NextHop)
		if err == nil {
			_, err = g.srv.AddPath(ctx, &api.AddPathRequest{Path: path})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("advertise %v: %w", p, err))
			continue
		}
		g.adv[p] = path
	}
	return errors.Join(errs...)
}

func localPath(p netip.Prefix, nextHop netip.Addr) (*api.Path, error) {
	nlri := bgp.NewIPAddrPrefix(uint8(p.Bits()), p.Addr().String())
	attrs := []bgp.PathAttributeInterface{
		bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP),
		bgp.NewPathAttributeNextHop(nextHop.String()),
	}
	return apiutil.NewPath(nlri, false, attrs, timeNow())
}

// PeerStates implements Speaker.
func (g *GoBGP) PeerStates(ctx context.Context) ([]PeerState, error) {
	g.mu.Lock()
	running, srv := g.running, g.srv
	g.mu.Unlock()
	if !running {
		return nil, nil
	}
	var out []PeerState
	err := srv.ListPeer(ctx, &api.ListPeerRequest{}, func(p *api.Peer) {
		st := PeerState{ASN: p.GetConf().GetPeerAsn()}
		st.Addr, _ = netip.ParseAddr(p.GetConf().GetNeighborAddress())
		s := p.GetState().GetSessionState()
		st.Established = s == api.PeerState_ESTABLISHED
		st.State = strings.ToLower(s.String())
		for _, a := range p.GetAfiSafis() {
			st.Received += a.GetState().GetReceived()
		}
		out = append(out, st)
	})
	if err != nil {
		return nil, fmt.Errorf("bgp list peers: %w", err)
	}
	slices.SortFunc(out, func(a, b PeerState) int { return a.Addr.Compare(b.Addr) })
	return out, nil
}
