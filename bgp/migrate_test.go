package bgp

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
)

// ipipMode Always -> Never in place: each peer is routed natively once it
// announces bgp/native and through IP-in-IP until then; the tunnel stays
// (receiving) until the previous identity is forgotten.
func TestBackendMigratesIPIPModeInPlace(t *testing.T) {
	r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"Always"}`)
	r.start(t, local(nil))
	b := r.b.(*Backend)
	p2, p3 := peer(2, nil), peer(3, nil)
	p2.Backends, p3.Backends = []string{IdentityIPIP}, []string{IdentityIPIP}
	r.apply(t, p2, p3)
	r.sp.Inject(cand("10.244.2.0/24", "10.0.0.2", "10.0.0.2"), cand("10.244.3.0/24", "10.0.0.3", "10.0.0.3"))
	r.apply(t, p2, p3)
	r.waitRoutes(t, "10.244.2.0/24 dev weft.ipip proto 87; 10.244.3.0/24 dev weft.ipip proto 87")
	if _, err := b.Reconfigure(context.Background(), json.RawMessage(`{"type":"bgp","ipipMode":"Always","asNumber":65001}`)); err == nil {
		t.Fatal("an AS number change was taken in place")
	}
	pub, err := b.Reconfigure(context.Background(), json.RawMessage(`{"type":"bgp","ipipMode":"Never"}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := b.Decapsulates(); !slices.Equal(got, []string{IdentityNative, IdentityIPIP}) || b.Identity() != IdentityNative || pub.MTU != 1480 {
		t.Fatalf("after Reconfigure: identity %s, decapsulates %v, mtu %d", b.Identity(), got, pub.MTU)
	}
	p2.Backends = []string{IdentityNative, IdentityIPIP}
	r.apply(t, p2, p3)
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 dev weft.ipip proto 87")
	p3.Backends = []string{IdentityNative}
	r.apply(t, p2, p3)
	r.waitRoutes(t, "10.244.2.0/24 via 10.0.0.2 dev eth0 proto 87; 10.244.3.0/24 via 10.0.0.3 dev eth0 proto 87")
	if fi.t.stopped != "" {
		t.Fatalf("tunnel stopped (%s) while the previous identity is still received", fi.t.stopped)
	}
	g := r.f.Guard.(*encapguard.Fake)
	if _, ok := g.Spec("ipip"); !ok {
		t.Fatal("IP-in-IP guard gone while IP-in-IP is still received")
	}
	if err := b.Forget(context.Background(), IdentityIPIP); err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Spec("ipip"); ok {
		t.Fatal("IP-in-IP guard left after no peer sends IP-in-IP any more")
	}
	if fi.t.stopped != "removed" || !slices.Equal(b.Decapsulates(), []string{IdentityNative}) || b.published().MTU != 1500 {
		t.Fatalf("after Forget: tunnel %q, decapsulates %v, mtu %d", fi.t.stopped, b.Decapsulates(), b.published().MTU)
	}
	var _ backend.Reconfigurer = b
}

// ipipMode Never -> Always in place: the guard (which Never's Start
// removed) is applied, with every peer, before the tunnel is given its
// peers (for the kernel link that is what brings it up). And Never's
// Start removes an IP-in-IP device an earlier weftd left: a kernel link
// whose guard is gone would decapsulate from anyone.
func TestBackendNeverToAlwaysGuardsFirst(t *testing.T) {
	r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"Never"}`)
	r.start(t, local(nil))
	if fi.removed != 1 {
		t.Fatalf("Never's Start removed the IP-in-IP device %d times, want 1", fi.removed)
	}
	b := r.b.(*Backend)
	g := r.f.Guard.(*encapguard.Fake)
	fi.guard = g
	r.apply(t, peer(2, nil), peer(3, nil))
	if _, ok := g.Spec("ipip"); ok {
		t.Fatal("an IP-in-IP guard under Never")
	}
	if _, err := b.Reconfigure(context.Background(), json.RawMessage(`{"type":"bgp","ipipMode":"Always"}`)); err != nil {
		t.Fatal(err)
	}
	s, ok := g.Spec("ipip")
	if !ok || len(s.Peers) != 2 || fi.t == nil || len(fi.t.peers) != 2 || fi.t.unguarded != 0 {
		t.Fatalf("after Reconfigure to Always: guard %v (%d peers), tunnel %+v", ok, len(s.Peers), fi.t)
	}
}

// A device that cannot be removed keeps its guard, on every path that
// removes both: Stop with cleanup, Forget, the factory's Cleanup and a
// Never start (a kernel ipip link without its guard decapsulates from
// anyone).
func TestIPIPGuardStaysWhileTheDeviceDoes(t *testing.T) {
	ctx := context.Background()
	guarded := func(t *testing.T, r *rig) bool {
		_, ok := r.f.Guard.(*encapguard.Fake).Spec("ipip")
		return ok
	}
	t.Run("stop with cleanup", func(t *testing.T) {
		r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"Always"}`)
		r.start(t, local(nil))
		r.apply(t, peer(2, nil))
		fi.fail = errors.New("busy")
		if err := r.b.Stop(ctx, true); err == nil || !guarded(t, r) {
			t.Fatalf("stop: %v, guard there %v", err, guarded(t, r))
		}
		fi.fail = nil
		if err := r.f.Cleanup(ctx); err != nil || guarded(t, r) {
			t.Fatalf("cleanup once the device goes: %v, guard there %v", err, guarded(t, r))
		}
	})
	t.Run("forget", func(t *testing.T) {
		r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"Always"}`)
		r.start(t, local(nil))
		r.apply(t, peer(2, nil))
		b := r.b.(*Backend)
		if _, err := b.Reconfigure(ctx, json.RawMessage(`{"type":"bgp","ipipMode":"Never"}`)); err != nil {
			t.Fatal(err)
		}
		fi.fail = errors.New("busy")
		if err := b.Forget(ctx, IdentityIPIP); err == nil || !guarded(t, r) {
			t.Fatalf("forget: %v, guard there %v", err, guarded(t, r))
		}
	})
	t.Run("cleanup and a Never start", func(t *testing.T) {
		r, fi := newIPIPRig(t, `{"type":"bgp","ipipMode":"Always"}`)
		r.start(t, local(nil))
		r.apply(t, peer(2, nil))
		if err := r.b.Stop(ctx, false); err != nil {
			t.Fatal(err)
		}
		fi.fail = errors.New("busy")
		if err := r.f.Cleanup(ctx); err == nil || !guarded(t, r) {
			t.Fatalf("cleanup: %v, guard there %v", err, guarded(t, r))
		}
		b, err := r.f.New(json.RawMessage(`{"type":"bgp","ipipMode":"Never"}`))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := b.Start(ctx, local(nil)); err == nil || !guarded(t, r) {
			t.Fatalf("Never start: %v, guard there %v", err, guarded(t, r))
		}
	})
}
