package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	api "github.com/osrg/gobgp/v3/api"
)

// The export policy: what this speaker passes on besides its own prefixes.
// Routes learned over eBGP (an external router's) are passed to nobody (no
// transit through a node), and routes learned over iBGP (other nodes',
// reflected or not) are not passed to external peers: a router outside
// learns a pod CIDR only from the node that owns it, with that node as the
// next hop.
const (
	exportPolicy = "weft-export"
	externalSet  = "weft-external"
	// noNeighbor keeps the external set non-empty: GoBGP matches an empty
	// neighbor set as "every neighbor".
	noNeighbor = "255.255.255.255/32"
)

func (g *GoBGP) installExportPolicy(ctx context.Context) error {
	if err := g.resetExternalSet(ctx); err != nil {
		return err
	}
	reject := &api.Actions{RouteAction: api.RouteAction_REJECT}
	pol := &api.Policy{Name: exportPolicy, Statements: []*api.Statement{
		{Name: exportPolicy + "-no-transit", Actions: reject,
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_EXTERNAL}},
		{Name: exportPolicy + "-own-only-to-external", Actions: reject,
			Conditions: &api.Conditions{RouteType: api.Conditions_ROUTE_TYPE_INTERNAL,
				NeighborSet: &api.MatchSet{Type: api.MatchSet_ANY, Name: externalSet}}},
	}}
	if err := g.srv.AddPolicy(ctx, &api.AddPolicyRequest{Policy: pol}); err != nil && !exists(err) {
		return fmt.Errorf("bgp export policy: %w", err)
	}
	err := g.srv.AddPolicyAssignment(ctx, &api.AddPolicyAssignmentRequest{Assignment: &api.PolicyAssignment{
		Name: "global", Direction: api.PolicyDirection_EXPORT,
		Policies: []*api.Policy{{Name: exportPolicy}}, DefaultAction: api.RouteAction_ACCEPT}})
	if err != nil && !exists(err) {
		return fmt.Errorf("bgp export policy assignment: %w", err)
	}
	return nil
}

// exists reports GoBGP's "already defined" errors: a reused server keeps
// its policies across Stop and Start.
func exists(err error) bool {
	return strings.Contains(err.Error(), "already")
}

// resetExternalSet leaves the external set holding only noNeighbor (a
// reused server keeps it across Stop and Start).
func (g *GoBGP) resetExternalSet(ctx context.Context) error {
	g.ext = map[string]bool{}
	if err := g.editExternalSet(ctx, true, []string{noNeighbor}); err != nil {
		return err
	}
	var stale []string
	err := g.srv.ListDefinedSet(ctx, &api.ListDefinedSetRequest{DefinedType: api.DefinedType_NEIGHBOR, Name: externalSet},
		func(d *api.DefinedSet) {
			for _, e := range d.GetList() {
				if e != noNeighbor {
					stale = append(stale, e)
				}
			}
		})
	if err != nil {
		return fmt.Errorf("bgp external peer set: %w", err)
	}
	return g.editExternalSet(ctx, false, stale)
}

// setExternalPeers makes the external set hold exactly addrs. It edits
// the set in place: GoBGP's Replace swaps in a new set object that the
// policy's statements do not see.
func (g *GoBGP) setExternalPeers(ctx context.Context, addrs []netip.Addr) error {
	want := map[string]bool{}
	for _, a := range addrs {
		want[netip.PrefixFrom(a, a.BitLen()).String()] = true
	}
	var add, del []string
	for e := range want {
		if !g.ext[e] {
			add = append(add, e)
		}
	}
	for e := range g.ext {
		if !want[e] {
			del = append(del, e)
		}
	}
	if err := g.editExternalSet(ctx, true, add); err != nil {
		return err
	}
	if err := g.editExternalSet(ctx, false, del); err != nil {
		return err
	}
	g.ext = want
	return nil
}

func (g *GoBGP) editExternalSet(ctx context.Context, add bool, list []string) error {
	if len(list) == 0 {
		return nil
	}
	set := &api.DefinedSet{DefinedType: api.DefinedType_NEIGHBOR, Name: externalSet, List: list}
	var err error
	if add {
		err = g.srv.AddDefinedSet(ctx, &api.AddDefinedSetRequest{DefinedSet: set})
	} else {
		err = g.srv.DeleteDefinedSet(ctx, &api.DeleteDefinedSetRequest{DefinedSet: set})
	}
	if err != nil {
		return fmt.Errorf("bgp external peer set %v: %w", list, err)
	}
	return nil
}

// externals lists the addresses of the external peers among sets of peers.
func externals(sets ...map[netip.Addr]Peer) []netip.Addr {
	var out []netip.Addr
	seen := map[netip.Addr]bool{}
	for _, s := range sets {
		for a, p := range s {
			if p.External && !seen[a] {
				seen[a] = true
				out = append(out, a)
			}
		}
	}
	return out
}
