package fabric

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"slices"
	"testing"

	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/internal/backend"
)

// rec records the lifecycle calls of fake backends in order.
type rec struct{ calls []string }

type fakeBackend struct {
	typ, id string
	r       *rec
	fail    bool
}

func (b *fakeBackend) Type() string { return b.typ }
func (b *fakeBackend) Start(context.Context, backend.LocalNode) (backend.Published, error) {
	b.r.calls = append(b.r.calls, "start "+b.id)
	return backend.Published{MTU: 1400, Attrs: map[string]string{"weft.dev/" + b.typ: b.id}}, nil
}
func (b *fakeBackend) Apply(context.Context, []backend.Peer) (backend.ApplyResult, error) {
	b.r.calls = append(b.r.calls, "apply "+b.id)
	if b.fail {
		return backend.ApplyResult{}, errors.New("boom")
	}
	return backend.ApplyResult{Published: backend.Published{MTU: 1400, Attrs: map[string]string{"weft.dev/" + b.typ: b.id}}}, nil
}
func (b *fakeBackend) Stop(_ context.Context, cleanup bool) error {
	b.r.calls = append(b.r.calls, "stop "+b.id+map[bool]string{true: " cleanup", false: ""}[cleanup])
	return nil
}

type fakeFactory struct {
	typ  string
	r    *rec
	fail bool
}

func (f fakeFactory) Type() string                         { return f.typ }
func (f fakeFactory) ValidateConfig(json.RawMessage) error { return nil }
func (f fakeFactory) Cleanup(context.Context) error        { return nil }
func (f fakeFactory) New(raw json.RawMessage) (backend.Backend, error) {
	return &fakeBackend{typ: f.typ, id: f.typ + string(raw), r: f.r, fail: f.fail}, nil
}

func TestManagerSwitchMakeBeforeBreak(t *testing.T) {
	ctx := context.Background()
	r := &rec{}
	m := NewManager([]backend.Factory{fakeFactory{typ: "a", r: r}, fakeFactory{typ: "b", r: r}}, slog.Default())
	m.SetDrain(0)
	if _, ok := m.Validators()["a"]; !ok || len(m.Validators()) != 2 {
		t.Fatal("validators")
	}
	if _, err := m.Ensure(ctx, config.Backend{Type: "a", Raw: json.RawMessage(`1`)}, backend.LocalNode{}); err != nil {
		t.Fatal(err)
	}
	if m.Converged() {
		t.Fatal("converged before Apply")
	}
	_, _ = m.Apply(ctx, nil)
	// Same section: nothing happens.
	_, _ = m.Ensure(ctx, config.Backend{Type: "a", Raw: json.RawMessage(` 1 `)}, backend.LocalNode{})
	// Another type: the new one starts while the old keeps running; it is
	// announced once it converged, and the old one goes once every peer
	// moved (with no peers, and no drain period, at once).
	_, _ = m.Ensure(ctx, config.Backend{Type: "b", Raw: json.RawMessage(`2`)}, backend.LocalNode{})
	if got := m.Decapsulates(); !slices.Equal(got, []string{"b", "a"}) || m.Active() != "a" {
		t.Fatalf("during switch: active %s decap %v", m.Active(), got)
	}
	_, _ = m.Apply(ctx, nil)
	if got := m.Decapsulates(); !slices.Equal(got, []string{"b"}) || !m.Converged() {
		t.Fatalf("after switch: %v", got)
	}
	// Same type, new parameters: the old instance lets go without cleanup.
	_, _ = m.Ensure(ctx, config.Backend{Type: "b", Raw: json.RawMessage(`3`)}, backend.LocalNode{})
	_ = m.Stop(ctx, false)
	want := []string{"start a1", "apply a1", "start b2", "apply b2", "apply a1", "apply b2", "stop a1 cleanup", "stop b2", "start b3", "stop b3"}
	if !slices.Equal(r.calls, want) {
		t.Fatalf("calls\n%v\nwant\n%v", r.calls, want)
	}
	if _, err := m.Ensure(ctx, config.Backend{Type: "zzz"}, backend.LocalNode{}); err == nil {
		t.Fatal("unknown type accepted")
	}
}

func TestManagerKeepsOldWhileNewFails(t *testing.T) {
	ctx := context.Background()
	r := &rec{}
	m := NewManager([]backend.Factory{fakeFactory{typ: "a", r: r}, fakeFactory{typ: "b", r: r, fail: true}}, slog.Default())
	_, _ = m.Ensure(ctx, config.Backend{Type: "a", Raw: json.RawMessage(`1`)}, backend.LocalNode{})
	_, _ = m.Apply(ctx, nil)
	_, _ = m.Ensure(ctx, config.Backend{Type: "b", Raw: json.RawMessage(`2`)}, backend.LocalNode{})
	if _, err := m.Apply(ctx, nil); err == nil {
		t.Fatal("failing backend reported success")
	}
	// b never converged: it is not announced, a keeps running.
	if slices.Contains(r.calls, "stop a1 cleanup") || !slices.Equal(m.Decapsulates(), []string{"a"}) {
		t.Fatalf("old backend stopped before the new one converged: %v", r.calls)
	}
	if i := slices.Index(r.calls, "start b2"); i < 0 || !slices.Contains(r.calls[i:], "apply a1") {
		t.Fatalf("old backend not kept converged: %v", r.calls)
	}
}

type updatingBackend struct {
	fakeBackend
	locals []backend.LocalNode
}

func (b *updatingBackend) UpdateLocal(l backend.LocalNode) { b.locals = append(b.locals, l) }

type updatingFactory struct {
	fakeFactory
	b *updatingBackend
}

func (f updatingFactory) New(json.RawMessage) (backend.Backend, error) { return f.b, nil }

// The same section again does not restart the backend, but a backend that
// follows the local node (bgp: its labels pick the topology) is told.
func TestManagerUpdatesLocalNode(t *testing.T) {
	ctx := context.Background()
	r := &rec{}
	ub := &updatingBackend{fakeBackend: fakeBackend{typ: "u", id: "u", r: r}}
	m := NewManager([]backend.Factory{updatingFactory{fakeFactory{typ: "u", r: r}, ub}}, slog.Default())
	sec := config.Backend{Type: "u", Raw: json.RawMessage(`{"type":"u"}`)}
	if _, err := m.Ensure(ctx, sec, backend.LocalNode{Name: "n"}); err != nil {
		t.Fatal(err)
	}
	l := backend.LocalNode{Name: "n", Labels: map[string]string{"weft.dev/route-reflector": "true"}}
	if _, err := m.Ensure(ctx, sec, l); err != nil {
		t.Fatal(err)
	}
	if len(ub.locals) != 1 || ub.locals[0].Labels["weft.dev/route-reflector"] != "true" || !slices.Equal(r.calls, []string{"start u"}) {
		t.Fatalf("updates %v, calls %v", ub.locals, r.calls)
	}
}
