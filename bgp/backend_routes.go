package bgp

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/route"
)

// converge hands the route writer the routes of every accepted learned
// path (ipipMode Never: the prefix via its next hop, the owner's underlay
// address, out of the underlay link). It returns the writer's changes and
// how many bgp peers have all their pod CIDRs routed.
//
// For a bgp peer whose pod CIDR is not learned it also keeps the route the
// filter would accept from that peer (its pod CIDR via its underlay
// address, per its Node object; the same route a learned path gives, so
// the kernel sees no change):
//   - until the backend is warm (every peer runs bgp and its CIDR was
//     learned, or Warmup after Start): a restarted weftd thus never deletes
//     the routes its predecessor installed while its sessions come up, and
//     a switch from another backend hands each destination over without a
//     gap;
//   - for b.hold after the CIDR was lost other than by its owner withdrawing
//     it over an established session (see lose): GoBGP v3 re-forms a
//     session whose reflector role changes, and a reflector that re-forms
//     one withdraws what it learned over it, so a reflector label change
//     would otherwise cut traffic until the new topology re-learns it.
//
// b.mu is held.
func (b *Backend) converge(ctx context.Context) (int, int, error) {
	learned := b.f.Speaker.Learned()
	b.lose(ctx, learned)
	have := map[netip.Prefix]bool{}
	var want []route.Route
	nodes := map[netip.Addr]bool{}
	for _, p := range b.peers {
		nodes[p.UnderlayIP] = p.AcceptsType(Type)
	}
	for _, r := range learned {
		have[r.Prefix] = true
		want = append(want, b.routeVia(r.Prefix, r.NextHop, nodes[r.NextHop]))
	}
	reached, missing := 0, 0
	for _, p := range b.peers {
		if !p.UnderlayIP.IsValid() || len(p.PodCIDRs) == 0 {
			continue
		}
		if !p.AcceptsType(Type) {
			missing++ // not switched to bgp yet: the warmup goes on
			continue
		}
		all := true
		for _, c := range p.PodCIDRs {
			if have[c.Masked()] {
				continue
			}
			all = false
			if _, held := b.held[c.Masked()]; held || !b.warm {
				want = append(want, b.routeVia(c.Masked(), p.UnderlayIP, true))
			}
		}
		if all {
			reached++
		} else {
			missing++
		}
	}
	if !b.warm && (missing == 0 || time.Since(b.started) > Warmup) {
		b.warm = true
		b.log.Info("bgp routes warm: only learned routes are installed from now on", "learned", len(learned), "peers_without_route", missing)
	}
	n, err := b.f.Routes.Apply(ctx, Type, want)
	if err != nil {
		err = fmt.Errorf("bgp: routes: %w", err)
	}
	return n, reached, err
}

// lose updates b.held from the learned set: a bgp peer's pod CIDR that was
// learned at the previous converge and is gone now is held (its
// Node-implied route kept) unless it came straight from its owner over a
// session that is still established, i.e. the owner withdrew it. Every
// other loss is the topology moving under the route: the session it came
// over closed or is being re-formed (either end), or a reflector withdrew
// it because its own session with the owner is. A held CIDR is released
// when it is learned again, when its owner leaves bgp (converge only keeps
// routes of bgp peers) or after b.hold. b.mu is held.
func (b *Backend) lose(ctx context.Context, learned []Route) {
	now := time.Now()
	cur := make(map[netip.Prefix]netip.Addr, len(learned))
	for _, r := range learned {
		cur[r.Prefix] = r.From
		delete(b.held, r.Prefix)
	}
	owner := map[netip.Prefix]netip.Addr{}
	for _, p := range b.peers {
		for _, c := range p.PodCIDRs {
			if p.AcceptsType(Type) { // any bgp identity (bgp/native, bgp/ipip, ...)
				owner[c.Masked()] = p.UnderlayIP
			}
		}
	}
	var est map[netip.Addr]bool
	for pfx, from := range b.last {
		o, ok := owner[pfx]
		if _, still := cur[pfx]; still || !ok {
			continue
		}
		if est == nil {
			est = b.establishedPeers(ctx)
		}
		if from == o && est[o] {
			continue // withdrawn by its owner
		}
		b.held[pfx] = now
		b.log.Info("bgp: route lost while sessions change; keeping the owner's route until it is learned again",
			"prefix", pfx, "owner", o, "learned_from", from, "for", b.hold)
	}
	b.last = cur
	for pfx, at := range b.held {
		if now.Sub(at) > b.hold {
			delete(b.held, pfx)
			b.log.Warn("bgp: route not learned again; removed", "prefix", pfx, "after", b.hold)
		}
	}
}

// establishedPeers are the sessions in state Established (none when the
// states cannot be read: every loss is then held).
func (b *Backend) establishedPeers(ctx context.Context) map[netip.Addr]bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	states, err := b.f.Speaker.PeerStates(ctx)
	if err != nil {
		b.log.Warn("bgp: session states unreadable", "err", err)
	}
	est := map[netip.Addr]bool{}
	for _, s := range states {
		est[s.Addr] = s.Established
	}
	return est
}

// routeVia is the route to dst via next hop nh: into the IP-in-IP device
// (via nh onlink for the kernel link) when nh is a bgp node that ipipMode
// says to encapsulate to (Always: all; CrossSubnet: those outside the
// node's underlay subnet), else via nh out of the underlay link (ipipMode
// Never, external peers' routes).
func (b *Backend) routeVia(dst netip.Prefix, nh netip.Addr, node bool) route.Route {
	mode := b.modeFor(nh)
	if b.tun != nil && node && mode != IPIPNever && (mode == IPIPAlways || !b.tun.UnderlaySubnet().Contains(nh)) {
		if b.tun.ViaPeer() {
			return route.Route{Dst: dst, Gw: nh, OnLink: true, Dev: b.tun.Device()}
		}
		return route.Route{Dst: dst, Dev: b.tun.Device()}
	}
	return route.Route{Dst: dst, Gw: nh, Dev: b.local.UnderlayLink}
}

// unreached lists the bgp peers none of whose sessions delivered their
// pod CIDR yet.
func (b *Backend) unreached(speakers []Node) []string {
	have := map[netip.Prefix]bool{}
	for _, r := range b.f.Speaker.Learned() {
		have[r.Prefix] = true
	}
	var out []string
	for _, n := range speakers {
		for _, c := range n.PodCIDRs {
			if !have[c.Masked()] {
				out = append(out, fmt.Sprintf("bgp: no route learned yet for %s of node %s", c, n.Name))
			}
		}
	}
	return out
}

// follow installs learned routes as they change and refreshes the
// reported session states, until ctx ends.
func (b *Backend) follow(ctx context.Context, done chan struct{}) {
	defer close(done)
	t := time.NewTicker(statePoll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.f.Speaker.Changed():
			b.refresh(ctx, true)
		case <-t.C:
			b.refresh(ctx, false)
		}
	}
}

func (b *Backend) refresh(ctx context.Context, routes bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.up {
		return
	}
	if routes || !b.warm || len(b.held) > 0 {
		if n, _, err := b.converge(ctx); err != nil {
			b.log.Warn("bgp: installing learned routes", "err", err)
		} else if n > 0 {
			b.log.Info("bgp: learned routes installed", "changes", n)
		}
	}
	b.report(ctx)
}

// report publishes the sessions' states in /readyz and the metrics.
func (b *Backend) report(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	states, err := b.f.Speaker.PeerStates(ctx)
	learned := len(b.f.Speaker.Learned())
	rejected, total := b.f.Speaker.Rejected()
	snap := Snapshot{Mode: b.cfg.IPIPMode, Impl: b.impl(), Running: true, Sessions: states, Learned: learned,
		Rejected: len(rejected), RejectedTotal: total}
	b.f.stats.set(snap)
	if b.f.Report == nil {
		return
	}
	line := snap.String()
	if err != nil {
		line += "; session states unreadable: " + err.Error()
	}
	b.f.Report.Detail(DetailKey, line)
}

// Snapshot is the backend's state as /readyz and the metrics show it.
type Snapshot struct {
	Mode IPIPMode
	// Impl is the IP-in-IP implementation ("userspace", "kernel"; "" for
	// ipipMode Never).
	Impl          string
	Running       bool
	Sessions      []PeerState
	Learned       int
	Rejected      int
	RejectedTotal uint64
}

// Established counts the established sessions.
func (s Snapshot) Established() int {
	n := 0
	for _, p := range s.Sessions {
		if p.Established {
			n++
		}
	}
	return n
}

// String is the /readyz line, e.g. "ipipMode Never; sessions 2/2
// established (10.0.0.2 AS64512 established, ...); routes learned 2,
// rejected 0 (0 since start)".
func (s Snapshot) String() string {
	var ps []string
	for _, p := range s.Sessions {
		ps = append(ps, fmt.Sprintf("%s AS%d %s", p.Addr, p.ASN, strings.ToLower(p.State)))
	}
	mode := string(s.Mode)
	if s.Impl != "" {
		mode += " (" + s.Impl + " ipip)"
	}
	return fmt.Sprintf("ipipMode %s; sessions %d/%d established (%s); routes learned %d, rejected %d (%d since start)",
		mode, s.Established(), len(s.Sessions), strings.Join(ps, ", "), s.Learned, s.Rejected, s.RejectedTotal)
}
