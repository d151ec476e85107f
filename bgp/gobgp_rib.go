package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/apiutil"
	"github.com/osrg/gobgp/v3/pkg/packet/bgp"
)

var timeNow = time.Now

// resync reads every known path of the RIB (not only the best ones, so a
// refused best path cannot hide an acceptable one), applies the import
// policy, and publishes the result when it changed.
func (g *GoBGP) resync(ctx context.Context) error {
	g.mu.Lock()
	srv, policy := g.srv, g.view.policy
	g.mu.Unlock()
	var cands [][]Candidate
	var stale []map[Candidate]bool
	err := srv.ListPath(ctx, &api.ListPathRequest{TableType: api.TableType_GLOBAL, Family: familyV4},
		func(d *api.Destination) {
			cs, st := destinationCandidates(d)
			cands, stale = append(cands, cs), append(stale, st)
		})
	if err != nil {
		return fmt.Errorf("list paths: %w", err)
	}
	var learned []Route
	var rejected []Rejection
	for i, cs := range cands {
		r, rej, ok := choose(policy, cs)
		rejected = append(rejected, rej...)
		if ok {
			r.Stale = stale[i][r.candidate()]
			learned = append(learned, r)
		}
	}
	sortRoutes(learned)
	g.publish(ctx, learned, rejected)
	return nil
}

func (r Route) candidate() Candidate {
	return Candidate{Prefix: r.Prefix, NextHop: r.NextHop, From: r.From}
}

// choose takes the first acceptable path in GoBGP's preference order; every
// refused path is reported, before or after the chosen one.
func choose(p ImportPolicy, cs []Candidate) (Route, []Rejection, bool) {
	var rej []Rejection
	var r Route
	found := false
	for _, c := range cs {
		ok, why := p.Accept(c)
		switch {
		case !ok:
			rej = append(rej, Rejection{Candidate: c, Reason: why})
		case !found:
			r, found = Route{Prefix: c.Prefix, NextHop: c.NextHop, From: c.From}, true
		}
	}
	return r, rej, found
}

func (g *GoBGP) publish(ctx context.Context, learned []Route, rejected []Rejection) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.running || ctx.Err() != nil {
		return
	}
	v := &g.view
	changed := !slices.Equal(v.learned, learned) || !slices.Equal(v.rejected, rejected)
	for _, r := range rejected {
		if !v.seen[r] {
			v.seen[r] = true
			v.rejectedTotal++
			g.log.Warn("bgp: path rejected", "prefix", r.Prefix, "nextHop", r.NextHop, "from", r.From, "reason", r.Reason)
		}
	}
	v.learned, v.rejected = learned, rejected
	if changed {
		signal(g.changed)
	}
}

// destinationCandidates converts the paths GoBGP knows for one prefix, best
// first, skipping locally originated ones.
func destinationCandidates(d *api.Destination) ([]Candidate, map[Candidate]bool) {
	var out []Candidate
	stale := map[Candidate]bool{}
	for _, p := range d.GetPaths() {
		from, err := netip.ParseAddr(p.GetNeighborIp())
		if err != nil || from.IsUnspecified() || p.GetIsWithdraw() {
			continue // local path
		}
		c, ok := pathCandidate(p)
		if !ok {
			continue
		}
		c.From = from
		out = append(out, c)
		if p.GetStale() {
			stale[c] = true
		}
	}
	return out, stale
}

func pathCandidate(p *api.Path) (Candidate, bool) {
	nlri, err := apiutil.GetNativeNlri(p)
	if err != nil {
		return Candidate{}, false
	}
	pfx, ok := nlri.(*bgp.IPAddrPrefix)
	if !ok {
		return Candidate{}, false
	}
	addr, ok := netip.AddrFromSlice(pfx.Prefix.To4())
	if !ok {
		return Candidate{}, false
	}
	c := Candidate{Prefix: netip.PrefixFrom(addr, int(pfx.Length)).Masked()}
	attrs, err := apiutil.GetNativePathAttributes(p)
	if err != nil {
		return Candidate{}, false
	}
	for _, a := range attrs {
		switch a := a.(type) {
		case *bgp.PathAttributeNextHop:
			c.NextHop, _ = netip.AddrFromSlice(a.Value.To4())
		case *bgp.PathAttributeMpReachNLRI:
			c.NextHop, _ = netip.AddrFromSlice(a.Nexthop.To4())
		}
	}
	return c, true
}
