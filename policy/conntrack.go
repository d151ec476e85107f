package policy

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/weftnet/weft/internal/conntrack"
	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/loop"

	"github.com/weftnet/weft/policy/rules"
)

// ConntrackTable is the node's connection tracking table (conntrack.Kernel;
// conntrack.Fake in tests).
type ConntrackTable interface {
	conntrack.Table
	// LocalAddrs returns the node's own addresses: flows from or to them
	// go through INPUT/OUTPUT, which policy does not police.
	LocalAddrs() ([]netip.Addr, error)
}

// ConntrackMetrics is implemented by a Metrics that counts the conntrack
// entries the controller deleted.
type ConntrackMetrics interface {
	ConntrackFlowsDeleted(n int)
}

// flowReaper deletes the conntrack entries of flows a policy change denies.
// WEFT-POL-CHECK accepts RELATED,ESTABLISHED before any policy, so without
// this an established TCP connection or a steady UDP flow outlives the
// deny. Flushing every entry of an affected pod would be wrong: a connection
// allowed one way only (its reply direction is not) would be picked up
// mid-stream as NEW in the reply direction and dropped. So each entry's
// original direction, as FORWARD saw it, is traced through the newly
// rendered State, and only denied ones go.
//
// It stays off the hot path: the controller's sync only queues the State
// it applied (applied); the comparison with the previous State, the dump and
// the traces run in the reaper's own goroutine (run), and only for local
// endpoints whose rules or sets changed. Every applied State is compared
// with its predecessor, none skipped, so a change and its undo (A, B, A)
// still count. An endpoint new since the last State is skipped: until its
// rules were in place its traffic was dropped as unknown (no entry is
// confirmed for a dropped packet), and CNI DEL deleted the entries of its
// address's previous holder.
type flowReaper struct {
	table   ConntrackTable
	bridge  string
	log     *slog.Logger
	metrics Metrics
	kick    chan struct{}

	mu    sync.Mutex
	queue []appliedState // applied since the worker last looked

	// The worker's own.
	prev    *rules.State    // last State compared
	latest  appliedState    // the State now in the kernel
	pending map[string]bool // host veths whose rules changed since the last reap
}

type appliedState struct {
	st  *rules.State
	eps []endpoint.Endpoint
}

func newFlowReaper(table ConntrackTable, bridge string, log *slog.Logger, m Metrics) *flowReaper {
	if table == nil {
		return nil
	}
	return &flowReaper{table: table, bridge: bridge, log: log, metrics: m, pending: map[string]bool{}, kick: make(chan struct{}, 1)}
}

// applied records that st is in the kernel for the local endpoints eps. It
// never blocks.
func (f *flowReaper) applied(st *rules.State, eps []endpoint.Endpoint) {
	if f == nil {
		return
	}
	f.mu.Lock()
	f.queue = append(f.queue, appliedState{st, eps})
	f.mu.Unlock()
	select {
	case f.kick <- struct{}{}:
	default:
	}
}

// collect compares the queued States in order and adds the endpoints whose
// rules changed to pending.
func (f *flowReaper) collect() {
	f.mu.Lock()
	q := f.queue
	f.queue = nil
	f.mu.Unlock()
	for _, a := range q {
		for _, v := range changedEndpoints(f.prev, a.st, a.eps) {
			f.pending[v] = true
		}
		f.prev, f.latest = a.st, a
	}
}

// run reaps until ctx ends. A failed reap is retried a second later, with
// the endpoints it did not finish.
func (f *flowReaper) run(ctx context.Context) {
	if f == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kick:
		}
		f.collect()
		if len(f.pending) == 0 {
			continue
		}
		n, err := f.reap(f.latest.st, f.latest.eps, f.pending)
		if m, ok := f.metrics.(ConntrackMetrics); ok && n > 0 {
			m.ConntrackFlowsDeleted(n)
		}
		if err == nil {
			f.pending = map[string]bool{}
			continue
		}
		f.log.Error("conntrack entries of denied flows not deleted", "err", err, "endpoints", len(f.pending), "deleted", n)
		go func() {
			if loop.Sleep(ctx, time.Second) {
				select {
				case f.kick <- struct{}{}:
				default:
				}
			}
		}()
	}
}

// ctKey is what the verdict on an entry depends on.
type ctKey struct {
	src, dst netip.Addr
	proto    uint8
	dport    uint16
	dnat     bool
}

// reap deletes the entries of st's denied flows that start or end at one
// of the endpoints vs, and returns how many it deleted.
func (f *flowReaper) reap(st *rules.State, eps []endpoint.Endpoint, vs map[string]bool) (int, error) {
	t0 := time.Now()
	vethOf := map[netip.Addr]string{} // every local pod address
	affected := map[netip.Addr]bool{}
	fams := map[conntrack.Family]bool{}
	for _, ep := range eps {
		as, _ := ep.Addrs() // records were validated when listed
		for _, a := range as {
			a = a.Unmap()
			vethOf[a] = ep.HostVeth
			if vs[ep.HostVeth] {
				affected[a] = true
				fams[conntrack.FamilyOf(a)] = true
			}
		}
	}
	if len(affected) == 0 {
		return 0, nil
	}
	local, err := f.table.LocalAddrs()
	if err != nil {
		return 0, err
	}
	host := map[netip.Addr]bool{}
	for _, a := range local {
		host[a] = true
	}
	tr := st.Tracer("FORWARD")
	tr.VerdictOnly = true
	deny := map[ctKey]bool{}
	denied := func(fl conntrack.Flow) bool {
		src, dst, dport := fl.Forwarded()
		if !affected[src] && !affected[dst] || host[src] || host[dst] {
			return false
		}
		k := ctKey{src: src, dst: dst, proto: fl.Proto, dport: dport, dnat: fl.Orig.Dst != dst}
		v, ok := deny[k]
		if !ok {
			v = !tr.Trace(f.packet(k, vethOf)).Allowed()
			deny[k] = v
		}
		return v
	}
	total := 0
	for _, fam := range []conntrack.Family{conntrack.IPv4, conntrack.IPv6} {
		if !fams[fam] {
			continue
		}
		n, err := f.table.DeleteFunc(fam, denied)
		total += n
		if err != nil {
			return total, err
		}
	}
	lvl := slog.LevelDebug
	if total > 0 {
		lvl = slog.LevelInfo
	}
	f.log.Log(context.Background(), lvl, "conntrack entries of flows the new policy denies deleted", "deleted", total,
		"endpoints", len(vs), "flows_traced", len(deny), "took", time.Since(t0).Round(time.Microsecond))
	return total, nil
}

// packet is the entry's original direction as FORWARD sees it. A local end
// is a bridge port; the other end is any other interface. Between two local
// pods the packet is bridged, unless it was DNATed (sent to a Service via
// the gateway, hence routed).
func (f *flowReaper) packet(k ctKey, vethOf map[netip.Addr]string) rules.Packet {
	return forwardPacket(f.bridge, k.src, k.dst, protoName(k.proto), k.dport, k.dnat, vethOf)
}

// forwardPacket is a new flow's first packet as FORWARD on this node sees
// it (the conntrack reaper's and weftctl's traces alike).
func forwardPacket(bridge string, src, dst netip.Addr, proto string, dport uint16, dnat bool, vethOf map[netip.Addr]string) rules.Packet {
	p := rules.Packet{Src: src, Dst: dst, Proto: proto, DPort: dport}
	sv, srcLocal := vethOf[src]
	dv, dstLocal := vethOf[dst]
	if srcLocal {
		p.InIface, p.PhysIn = bridge, sv
	}
	if dstLocal {
		p.OutIface = bridge
		if srcLocal && !dnat {
			p.PhysOut, p.Bridged = dv, true
		}
	}
	return p
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	case 1, 58:
		return "icmp"
	}
	return "proto-" + strconv.Itoa(int(p))
}

// changedEndpoints returns the host veths of eps whose rules differ between
// prev and cur: a chain reachable from the endpoint's from/to chains, or an
// ipset those chains match on. With no prev (the first sync after a start:
// policies may have changed meanwhile) every endpoint counts as changed; a
// change of the fixed dispatch (WEFT-POL-FWD, WEFT-POL-CHECK) changes all.
func changedEndpoints(prev, cur *rules.State, eps []endpoint.Endpoint) []string {
	var out []string
	if prev == nil {
		for _, ep := range eps {
			out = append(out, ep.HostVeth)
		}
		return out
	}
	d := newStateDiff(prev, cur)
	all := d.chain(rules.ChainForward) || d.chain(rules.ChainCheck)
	for _, ep := range eps {
		from, to := rules.FromChain(ep.HostVeth), rules.ToChain(ep.HostVeth)
		if _, known := d.old[from]; !known {
			continue // new endpoint: no entries of its own yet
		}
		if all || d.reach(from) || d.reach(to) {
			out = append(out, ep.HostVeth)
		}
	}
	return out
}

// stateDiff compares two States chain by chain and set by set, memoized.
type stateDiff struct {
	old, cur       map[string][]rules.Rule
	oldSet, curSet map[string]*rules.IPSet
	chains, sets   map[string]bool // name -> changed
	reached        map[string]bool // chain -> a change is reachable from it
}

func newStateDiff(prev, cur *rules.State) *stateDiff {
	d := &stateDiff{old: map[string][]rules.Rule{}, cur: map[string][]rules.Rule{}, oldSet: map[string]*rules.IPSet{}, curSet: map[string]*rules.IPSet{},
		chains: map[string]bool{}, sets: map[string]bool{}, reached: map[string]bool{}}
	for _, c := range prev.Chains {
		d.old[c.Name] = c.Rules
	}
	for _, c := range cur.Chains {
		d.cur[c.Name] = c.Rules
	}
	for i := range prev.IPSets {
		d.oldSet[prev.IPSets[i].Name] = &prev.IPSets[i]
	}
	for i := range cur.IPSets {
		d.curSet[cur.IPSets[i].Name] = &cur.IPSets[i]
	}
	return d
}

func (d *stateDiff) chain(name string) bool {
	if v, ok := d.chains[name]; ok {
		return v
	}
	o, inOld := d.old[name]
	c, inCur := d.cur[name]
	v := inOld != inCur || !sameRules(o, c) && !slices.Equal(o, c)
	d.chains[name] = v
	return v
}

func (d *stateDiff) set(name string) bool {
	if v, ok := d.sets[name]; ok {
		return v
	}
	o, c := d.oldSet[name], d.curSet[name]
	v := (o == nil) != (c == nil) || o != nil && (o.Type != c.Type || !sameSlice(o.Members, c.Members) && !slices.Equal(o.Members, c.Members))
	d.sets[name] = v
	return v
}

// reach reports whether name or a chain it jumps to changed, or an ipset
// its rules match on.
func (d *stateDiff) reach(name string) bool {
	if v, ok := d.reached[name]; ok {
		return v
	}
	d.reached[name] = false // cycles (never rendered) end here
	v := d.chain(name)
	for _, r := range d.cur[name] {
		if v {
			break
		}
		if r.Match.SrcSet != "" && d.set(r.Match.SrcSet) || r.Match.DstSet != "" && d.set(r.Match.DstSet) {
			v = true
		}
		if (r.Action.Verb == rules.Jump || r.Action.Verb == rules.Goto) && d.reach(r.Action.Target) {
			v = true
		}
	}
	d.reached[name] = v
	return v
}

// sameRules reports whether a and b are the same slice: the renderer's
// caches hand unchanged chains to the next State as they are (sets'
// members likewise, see sameSlice).
func sameRules(a, b []rules.Rule) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}
