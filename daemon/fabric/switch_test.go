package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/route"
)

// routeBackend is a fake backend built through the contract: it routes
// each peer that accepts its identity through its own device, via the
// node's shared route writer (owner = identity), and keeps a goroutine
// running for its life. Its section is {"id": "..."}: the identity is
// type + "/" + id ("" id: the type).
type routeBackend struct {
	typ, id string
	routes  route.Writer
	life    context.Context
	done    chan struct{} // closed when the life goroutine ended
	log     *[]string
	// recv are the identities a reconfigurable one still receives.
	recv []string
}

func (b *routeBackend) Type() string     { return b.typ }
func (b *routeBackend) Identity() string { return b.id }

func (b *routeBackend) Start(life context.Context, _ backend.LocalNode) (backend.Published, error) {
	b.life, b.done = life, make(chan struct{})
	go func() { <-life.Done(); close(b.done) }() // a relay, a BGP server...
	*b.log = append(*b.log, "start "+b.id)
	return backend.Published{MTU: 1400 + len(b.id), Attrs: map[string]string{"weft.dev/mac-" + b.id: "m"}}, nil
}

func (b *routeBackend) Apply(ctx context.Context, peers []backend.Peer) (backend.ApplyResult, error) {
	var rs []route.Route
	for _, p := range peers {
		if !p.Accepts(b.id) {
			continue
		}
		for _, c := range p.PodCIDRs {
			rs = append(rs, route.Route{Dst: c, Gw: p.UnderlayIP, Dev: "weft." + b.id, OnLink: true})
		}
	}
	n, err := b.routes.Apply(ctx, b.id, rs)
	return backend.ApplyResult{Peers: len(rs), Changes: n}, err
}

func (b *routeBackend) Stop(ctx context.Context, cleanup bool) error {
	*b.log = append(*b.log, "stop "+b.id+map[bool]string{true: " cleanup"}[cleanup])
	if !cleanup {
		return nil
	}
	_, err := b.routes.Release(ctx, b.id)
	return err
}

type routeFactory struct {
	typ    string
	routes route.Writer
	built  *[]*routeBackend
	log    *[]string
}

func (f routeFactory) Type() string                         { return f.typ }
func (f routeFactory) ValidateConfig(json.RawMessage) error { return nil }
func (f routeFactory) Cleanup(context.Context) error        { return nil }
func (f routeFactory) Identity(raw json.RawMessage) (string, error) {
	var s struct{ ID string }
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", err
	}
	if s.ID == "bad" {
		return "", errors.New("bad section")
	}
	if s.ID == "" {
		return f.typ, nil
	}
	return f.typ + "/" + s.ID, nil
}
func (f routeFactory) SectionFor(id string, _ json.RawMessage) (json.RawMessage, bool) {
	t, rest, _ := strings.Cut(id, "/")
	if t != f.typ {
		return nil, false
	}
	return json.RawMessage(`{"id":"` + rest + `"}`), true
}
func (f routeFactory) New(raw json.RawMessage) (backend.Backend, error) {
	id, err := f.Identity(raw)
	if err != nil {
		return nil, err
	}
	b := &routeBackend{typ: f.typ, id: id, routes: f.routes, log: f.log}
	*f.built = append(*f.built, b)
	return b, nil
}

func ended(b *routeBackend) bool {
	select {
	case <-b.done:
		return true
	case <-time.After(time.Second):
		return false
	}
}

// world is a node's manager over fakes, and its peers.
type world struct {
	t     *testing.T
	m     *Manager
	tab   *route.Table
	k     *route.Fake
	built []*routeBackend
	log   []string
	peers []backend.Peer
}

func newWorld(t *testing.T, types ...string) *world {
	w := &world{t: t}
	w.tab, w.k = route.NewFakeTable()
	var fs []backend.Factory
	for _, typ := range types {
		fs = append(fs, routeFactory{typ, w.tab, &w.built, &w.log})
	}
	w.m = NewManager(fs, slog.Default())
	w.m.SetDrain(50 * time.Millisecond)
	w.m.SetRoutes(w.tab)
	for i, name := range []string{"n2", "n3", "n4"} {
		w.peers = append(w.peers, backend.Peer{Name: name, UnderlayIP: netip.AddrFrom4([4]byte{172, 18, 0, byte(3 + i)}),
			PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(2 + i), 0}), 24)}, Attrs: map[string]string{}})
	}
	return w
}

func sec(typ, id string) config.Backend {
	return config.Backend{Type: typ, Raw: json.RawMessage(`{"id":"` + id + `"}`)}
}

// peer sets what peer i announces: the identities it decapsulates and
// the one it sends with.
func (w *world) peer(i int, sending string, decap ...string) {
	w.peers[i].Backends = decap
	w.peers[i].Attrs = map[string]string{backend.AnnoBackend: sending}
}

func (w *world) ensure(s config.Backend, local backend.LocalNode) {
	w.t.Helper()
	if _, err := w.m.Ensure(context.Background(), s, local); err != nil {
		w.t.Fatal(err)
	}
}

func (w *world) apply() {
	w.t.Helper()
	if _, err := w.m.Apply(context.Background(), w.peers); err != nil {
		w.t.Fatal(err)
	}
}

// expect checks the owner (identity) of each peer's route, that kernel and
// writer agree, and the node's announced state.
func (w *world) expect(what string, owners []string, sending, phase string, decap ...string) {
	w.t.Helper()
	if err := w.k.CheckOneOwner(); err != nil {
		w.t.Fatalf("%s: %v", what, err)
	}
	got := map[string]string{}
	for dst, o := range w.tab.Owners() {
		got[dst.String()] = o
	}
	want := map[string]string{}
	for i, o := range owners {
		if o != "" {
			want[w.peers[i].PodCIDRs[0].String()] = o
		}
	}
	for _, r := range w.k.Routes() {
		if o := w.k.Owners(r.Dst); len(o) != 1 || o[0] != got[r.Dst.String()] || r.Dev != "weft."+o[0] {
			w.t.Fatalf("%s: kernel route %v written by %v, the writer says %s", what, r.Route, o, got[r.Dst.String()])
		}
	}
	if !maps.Equal(got, want) || len(w.k.Routes()) != len(want) {
		w.t.Fatalf("%s: route owners %v (kernel %v), want %v", what, got, w.k.Routes(), want)
	}
	st := w.m.Snapshot()
	if st.Sending != sending || st.Phase != phase || !slices.Equal(st.Decapsulates, decap) {
		w.t.Fatalf("%s: sending %q phase %q decapsulates %v; want %q %q %v", what, st.Sending, st.Phase, st.Decapsulates, sending, phase, decap)
	}
}

// Each handed-over destination changed owner by one replace, never a
// delete of a destination that was still wanted.
func (w *world) noGap() {
	w.t.Helper()
	for _, o := range w.k.Ops() {
		if s := o.String(); strings.HasPrefix(s, "delete") && !strings.HasSuffix(s, "->") {
			w.t.Fatalf("route written with a gap: %s (all: %v)", s, w.k.Ops())
		}
	}
}

// A peer that does not yet accept the new identity keeps its route
// through the old backend; each peer moves by one replace when it
// announces the new one; the old backend goes only when every peer sends
// the new one and the drain passed.
func TestMigrationPerPeer(t *testing.T) {
	w := newWorld(t, "a", "b")
	for i := range w.peers {
		w.peer(i, "a", "a")
	}
	// The sync context ends right after Ensure; the backend's life must not.
	syncCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
	if _, err := w.m.Ensure(syncCtx, sec("a", ""), backend.LocalNode{}); err != nil {
		t.Fatal(err)
	}
	cancel()
	w.apply()
	w.expect("a", []string{"a", "a", "a"}, "a", PhaseNone, "a")
	if w.built[0].life.Err() != nil {
		t.Fatal("backend a's lifetime ended with the sync context")
	}
	w.ensure(sec("b", ""), backend.LocalNode{})
	// b is announced only once it converged (its guard and tables know
	// every peer: a peer sends it as soon as it is announced), which
	// Ensure does at once with the last peers.
	w.expect("b started next to a", []string{"a", "a", "a"}, "a", PhaseReceive, "b", "a")
	if pub := w.m.Published(); pub.MTU != 1401 || pub.Attrs["weft.dev/mac-a"] != "m" || pub.Attrs["weft.dev/mac-b"] != "m" {
		t.Fatalf("published during the migration: %+v (want the smaller MTU and both backends' annotations)", pub)
	}
	w.apply()
	w.expect("no peer accepts b yet", []string{"a", "a", "a"}, "a", PhaseReceive, "b", "a")
	w.peer(0, "a", "b", "a")
	w.apply()
	w.expect("n2 accepts b", []string{"b", "a", "a"}, "a", PhaseReceive, "b", "a")
	w.peer(1, "a", "b", "a")
	w.peer(2, "a", "b", "a")
	w.apply()
	w.expect("every peer accepts b: sending b", []string{"b", "b", "b"}, "b", PhaseSend, "b", "a")
	w.peer(0, "b", "b", "a")
	w.peer(1, "b", "b", "a")
	w.apply()
	w.expect("n4 still sends a", []string{"b", "b", "b"}, "b", PhaseSend, "b", "a")
	if slices.Contains(w.log, "stop a cleanup") {
		t.Fatal("a stopped while a peer still sends it")
	}
	w.peer(2, "b", "b", "a")
	w.apply()
	w.expect("every peer sends b: drain", []string{"b", "b", "b"}, "b", PhaseDrain, "b", "a")
	time.Sleep(60 * time.Millisecond)
	w.apply()
	w.expect("drained", []string{"b", "b", "b"}, "b", PhaseNone, "b")
	if !ended(w.built[0]) || !slices.Contains(w.log, "stop a cleanup") || w.built[1].life.Err() != nil {
		t.Fatalf("after the drain: a ended %v, b %v, calls %v", w.built[0].life.Err(), w.built[1].life.Err(), w.log)
	}
	if pub := w.m.Published(); pub.Attrs["weft.dev/mac-a"] != "" || pub.MTU != 1401 {
		t.Fatalf("a's annotation still published after it stopped: %+v", pub)
	}
	w.noGap()
	if err := w.m.Stop(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	w.expect("stopped with cleanup", nil, "", PhaseNone)
	if !ended(w.built[1]) {
		t.Fatal("backend b's lifetime outlived Stop")
	}
}

// Another VNI or port of the same type is another identity: a migration
// with two instances side by side, not a restart in place.
func TestMigrationOptionChange(t *testing.T) {
	w := newWorld(t, "vxlan")
	for i := range w.peers {
		w.peer(i, "vxlan", "vxlan")
	}
	w.ensure(sec("vxlan", ""), backend.LocalNode{})
	w.apply()
	w.ensure(sec("vxlan", "7"), backend.LocalNode{})
	w.apply()
	w.expect("vxlan/7 beside vxlan", []string{"vxlan", "vxlan", "vxlan"}, "vxlan", PhaseReceive, "vxlan/7", "vxlan")
	if slices.Contains(w.log, "stop vxlan") {
		t.Fatalf("the old instance was stopped: %v", w.log)
	}
	w.peer(1, "vxlan", "vxlan/7", "vxlan")
	w.apply()
	w.expect("n3 moved", []string{"vxlan", "vxlan/7", "vxlan"}, "vxlan", PhaseReceive, "vxlan/7", "vxlan")
	w.noGap()
}

// weftd restarted mid-migration: it finds the identities it announced and
// receives them again, and converges to the same end state.
func TestMigrationRestartAdoption(t *testing.T) {
	w := newWorld(t, "a", "b")
	for i := range w.peers {
		w.peer(i, "a", "b", "a")
	}
	w.peer(0, "a", "a")
	local := backend.LocalNode{Attrs: map[string]string{backend.AnnoBackends: "b,a", backend.AnnoBackend: "a"}}
	w.ensure(sec("b", ""), local)
	if got := w.log; !slices.Equal(got, []string{"start a", "start b"}) {
		t.Fatalf("restarted weftd started %v, want the old receiver first", got)
	}
	w.apply()
	w.expect("resumed", []string{"a", "b", "b"}, "a", PhaseReceive, "b", "a")
	for i := range w.peers {
		w.peer(i, "b", "b")
	}
	w.apply()
	time.Sleep(60 * time.Millisecond)
	w.apply()
	w.expect("finished", []string{"b", "b", "b"}, "b", PhaseNone, "b")
	// A node that joins later, with nothing announced, runs b only.
	j := newWorld(t, "a", "b")
	for i := range j.peers {
		j.peer(i, "b", "b")
	}
	j.ensure(sec("b", ""), backend.LocalNode{Attrs: map[string]string{}})
	j.apply()
	j.expect("joiner", []string{"b", "b", "b"}, "b", PhaseNone, "b")
}

// A second change during a migration supersedes it: the running target
// drains like the old one; going back to an identity still draining takes
// its devices over (stop without cleanup, a fresh instance adopts).
func TestMigrationSupersede(t *testing.T) {
	w := newWorld(t, "a", "b", "c")
	for i := range w.peers {
		w.peer(i, "a", "a")
	}
	w.ensure(sec("a", ""), backend.LocalNode{})
	w.apply()
	w.ensure(sec("b", ""), backend.LocalNode{})
	w.peer(0, "a", "b", "a")
	w.apply()
	w.expect("a->b half way", []string{"b", "a", "a"}, "a", PhaseReceive, "b", "a")
	w.ensure(sec("c", ""), backend.LocalNode{})
	w.apply()
	w.expect("superseded by c", []string{"b", "a", "a"}, "b", PhaseReceive, "c", "b", "a")
	for i := range w.peers {
		w.peer(i, "c", "c", "b", "a")
	}
	w.apply()
	time.Sleep(60 * time.Millisecond)
	w.apply()
	w.expect("c everywhere", []string{"c", "c", "c"}, "c", PhaseNone, "c")
	if !slices.Contains(w.log, "stop a cleanup") || !slices.Contains(w.log, "stop b cleanup") {
		t.Fatalf("old instances not cleaned up: %v", w.log)
	}
	w.noGap()

	// c -> a -> c: back to c while it drains.
	for i := range w.peers {
		w.peer(i, "c", "c")
	}
	w.ensure(sec("a", ""), backend.LocalNode{})
	w.peer(0, "c", "a", "c")
	w.apply()
	w.expect("c->a half way", []string{"a", "c", "c"}, "c", PhaseReceive, "a", "c")
	w.log = nil
	w.ensure(sec("c", ""), backend.LocalNode{})
	if !slices.Equal(w.log, []string{"stop c", "start c"}) {
		t.Fatalf("going back to c: %v, want the draining c taken over without cleanup", w.log)
	}
	w.apply()
	w.expect("back on c", []string{"c", "c", "c"}, "c", PhaseDrain, "c", "a")
	w.noGap()
}

// An invalid section changes nothing: the running backends stay as they
// are and keep converging.
func TestMigrationInvalidSection(t *testing.T) {
	w := newWorld(t, "a", "b")
	for i := range w.peers {
		w.peer(i, "a", "a")
	}
	w.ensure(sec("a", ""), backend.LocalNode{})
	w.apply()
	for _, s := range []config.Backend{sec("b", "bad"), {Type: "zzz", Raw: json.RawMessage(`{}`)}} {
		if _, err := w.m.Ensure(context.Background(), s, backend.LocalNode{}); err == nil {
			t.Fatalf("%s accepted", s.Raw)
		}
		w.apply()
		w.expect("after "+s.Type, []string{"a", "a", "a"}, "a", PhaseNone, "a")
	}
	if !slices.Equal(w.log, []string{"start a"}) {
		t.Fatalf("an invalid section touched the backends: %v", w.log)
	}
}

// reconfBackend migrates between identities of its type in place.
type reconfBackend struct {
	routeBackend
	calls  []string
	refuse bool
}

func (b *reconfBackend) Reconfigure(_ context.Context, raw json.RawMessage) (backend.Published, error) {
	id, _ := routeFactory{typ: b.typ}.Identity(raw)
	if b.refuse {
		b.calls = append(b.calls, "refuse "+id)
		return backend.Published{}, errors.New("more than the identity changed")
	}
	b.calls = append(b.calls, "reconfigure "+id)
	if !slices.Contains(b.recv, b.id) {
		b.recv = append(b.recv, b.id)
	}
	b.id = id
	return backend.Published{MTU: 1500}, nil
}
func (b *reconfBackend) Decapsulates() []string { return append([]string{b.id}, b.recv...) }
func (b *reconfBackend) Forget(_ context.Context, id string) error {
	b.calls = append(b.calls, "forget "+id)
	b.recv = slices.DeleteFunc(b.recv, func(s string) bool { return s == id })
	return nil
}

type reconfFactory struct {
	routeFactory
	b *reconfBackend
}

func (f reconfFactory) New(json.RawMessage) (backend.Backend, error) { return f.b, nil }

// bgp's ipipMode changes are migrations inside one instance: the previous
// identity stays received until the drain, then is forgotten.
func TestMigrationInPlace(t *testing.T) {
	var log []string
	tab, _ := route.NewFakeTable()
	b := &reconfBackend{routeBackend: routeBackend{typ: "bgp", id: "bgp/ipip", routes: tab, log: &log}}
	m := NewManager([]backend.Factory{reconfFactory{routeFactory{typ: "bgp"}, b}}, slog.Default())
	m.SetDrain(0)
	ctx := context.Background()
	if _, err := m.Ensure(ctx, sec("bgp", "ipip"), backend.LocalNode{}); err != nil {
		t.Fatal(err)
	}
	p := []backend.Peer{{Name: "n2", Backends: []string{"bgp/ipip"}, Attrs: map[string]string{backend.AnnoBackend: "bgp/ipip"}}}
	_, _ = m.Apply(ctx, p)
	if _, err := m.Ensure(ctx, sec("bgp", ""), backend.LocalNode{}); err != nil {
		t.Fatal(err)
	}
	_, _ = m.Apply(ctx, p)
	if st := m.Snapshot(); !slices.Equal(st.Decapsulates, []string{"bgp", "bgp/ipip"}) || st.Sending != "bgp/ipip" {
		t.Fatalf("in place: %+v", st)
	}
	p[0].Backends, p[0].Attrs[backend.AnnoBackend] = []string{"bgp", "bgp/ipip"}, "bgp"
	_, _ = m.Apply(ctx, p)
	_, _ = m.Apply(ctx, p)
	if st := m.Snapshot(); !slices.Equal(st.Decapsulates, []string{"bgp"}) || st.Sending != "bgp" || st.Phase != PhaseNone {
		t.Fatalf("after the drain: %+v", st)
	}
	if !slices.Equal(b.calls, []string{"reconfigure bgp", "forget bgp/ipip"}) || slices.Contains(log, "stop bgp/ipip cleanup") {
		t.Fatalf("calls %v, lifecycle %v", b.calls, log)
	}
}

// The metrics follow the migration: what the node receives, what it
// sends with, and the phase.
func TestMigrationMetrics(t *testing.T) {
	w := newWorld(t, "a", "b")
	for i := range w.peers {
		w.peer(i, "a", "a")
	}
	w.ensure(sec("a", ""), backend.LocalNode{})
	w.apply()
	w.ensure(sec("b", ""), backend.LocalNode{})
	w.apply()
	reg := prometheus.NewRegistry()
	reg.MustRegister(w.m)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, l.GetName()+"="+l.GetValue())
			}
			got = append(got, fmt.Sprintf("%s{%s} %g", mf.GetName(), strings.Join(ls, ","), m.GetGauge().GetValue()))
		}
	}
	want := []string{
		"weft_backend_info{identity=a,sending=true,type=a} 1",
		"weft_backend_info{identity=b,sending=false,type=b} 1",
		"weft_backend_migration_phase{} 1",
	}
	if !slices.Equal(got, want) {
		t.Fatalf("metrics\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A same-type change the backend cannot migrate in place (bgp: the AS
// number changed too) is applied by a restart, never left unapplied.
func TestMigrationInPlaceRefusedRestarts(t *testing.T) {
	var log []string
	tab, _ := route.NewFakeTable()
	b := &reconfBackend{routeBackend: routeBackend{typ: "bgp", id: "bgp/ipip", routes: tab, log: &log}, refuse: true}
	m := NewManager([]backend.Factory{reconfFactory{routeFactory{typ: "bgp"}, b}}, slog.Default())
	ctx := context.Background()
	if _, err := m.Ensure(ctx, sec("bgp", "ipip"), backend.LocalNode{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Ensure(ctx, sec("bgp", "native"), backend.LocalNode{}); err != nil {
		t.Fatalf("refused in-place change left unapplied: %v", err)
	}
	if !slices.Equal(b.calls, []string{"refuse bgp/native"}) || !slices.Equal(log, []string{"start bgp/ipip", "stop bgp/ipip", "start bgp/ipip"}) {
		t.Fatalf("calls %v, lifecycle %v", b.calls, log)
	}
}
