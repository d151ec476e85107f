package ops

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/nodeapi"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
)

type mux struct{ *http.ServeMux }

func (m mux) Handle(p string, h http.Handler) error { m.ServeMux.Handle(p, h); return nil }

type ready struct{}

func (ready) Ready() (bool, []string) { return false, []string{"lease: not yet synced"} }
func (ready) Details() []string       { return []string{"peer-problems: none"} }

// The node's IPAM as weftctl reads it: weft-ipam's real disk store joined
// with the plugin's records; release frees only the address still held by
// the named container, removes its stale record, and refuses while the
// recorded pod exists.
func TestIPAMAndRelease(t *testing.T) {
	dir := t.TempDir()
	st := disk.New(filepath.Join(dir, "ipam"), disk.Options{})
	eps := filepath.Join(dir, "endpoints")
	err := st.Update(context.Background(), func(s *store.State) (bool, error) {
		s.Allocations = append(s.Allocations,
			store.Allocation{IP: netip.MustParseAddr("10.244.1.2"), ContainerID: "live", IfName: "eth0"},
			store.Allocation{IP: netip.MustParseAddr("10.244.1.3"), ContainerID: "gone", IfName: "eth0"},
			store.Allocation{IP: netip.MustParseAddr("10.244.1.4"), ContainerID: "norecord", IfName: "eth0"})
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range []endpoint.Endpoint{
		{ContainerID: "live", IfName: "eth0", PodNamespace: "n", PodName: "live", PodUID: "u1", HostVeth: "wvlive", IPs: []string{"10.244.1.2/24"}},
		{ContainerID: "gone", IfName: "eth0", PodNamespace: "n", PodName: "gone", PodUID: "u2", HostVeth: "wvgone", IPs: []string{"10.244.1.3/24"}},
	} {
		if err := endpoint.Write(eps, e); err != nil {
			t.Fatal(err)
		}
	}
	m := mux{http.NewServeMux()}
	d := Deps{Node: "n1", Status: ready{}, IPAM: st, EndpointDir: eps, PodLive: func(uid string) bool { return uid == "u1" },
		Log: slog.New(slog.DiscardHandler)}
	if err := Register(m, d); err != nil {
		t.Fatal(err)
	}
	call := func(method, path string, in, out any) int {
		var body bytes.Buffer
		if in != nil {
			_ = json.NewEncoder(&body).Encode(in)
		}
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, httptest.NewRequest(method, path, &body))
		if out != nil && rec.Code == 200 {
			if err := json.Unmarshal(rec.Body.Bytes(), out); err != nil {
				t.Fatal(err)
			}
		}
		return rec.Code
	}
	var ns nodeapi.NodeStatus
	if code := call("GET", nodeapi.NodePath, nil, &ns); code != 200 || ns.Node != "n1" || ns.Ready || len(ns.Reasons) != 1 || len(ns.Details) != 1 {
		t.Errorf("node: %d %+v", code, ns)
	}
	var ip nodeapi.IPAM
	if code := call("GET", nodeapi.IPAMPath, nil, &ip); code != 200 || len(ip.Allocations) != 3 ||
		ip.Allocations[0].PodName != "live" || ip.Allocations[1].PodUID != "u2" || ip.Allocations[2].PodName != "" {
		t.Fatalf("ipam: %d %+v", code, ip)
	}
	rel := func(addr, id string) (int, nodeapi.ReleaseResult) {
		var r nodeapi.ReleaseResult
		return call("POST", nodeapi.ReleasePath, nodeapi.ReleaseRequest{IP: addr, ContainerID: id}, &r), r
	}
	if code, _ := rel("10.244.1.2", "live"); code != http.StatusConflict {
		t.Errorf("release of a live pod's address: %d, want 409", code)
	}
	if code, r := rel("10.244.1.3", "other"); code != 200 || r.Released != 0 {
		t.Errorf("release naming another container: %d %+v, want nothing released", code, r)
	}
	if code, r := rel("10.244.1.3", "gone"); code != 200 || r.Released != 1 || !r.RecordRemoved {
		t.Errorf("release of a leaked address: %d %+v", code, r)
	}
	if code, r := rel("10.244.1.4", "norecord"); code != 200 || r.Released != 1 || r.RecordRemoved {
		t.Errorf("release without a record: %d %+v", code, r)
	}
	if _, ok, _ := endpoint.Read(eps, "wvgone"); ok {
		t.Error("the released attachment's record is still there")
	}
	call("GET", nodeapi.IPAMPath, nil, &ip)
	if len(ip.Allocations) != 1 || ip.Allocations[0].IP != "10.244.1.2" {
		t.Errorf("after release: %+v", ip.Allocations)
	}
	if code := call("GET", nodeapi.ReleasePath, nil, nil); code != http.StatusMethodNotAllowed {
		t.Errorf("GET release: %d", code)
	}
}

// A release is refused while the attachment's network namespace still
// exists, even when the API does not (yet) show its pod: the informer lags
// a pod created a moment ago, and freeing its address then hands it to the
// next pod while the first still uses it.
func TestReleaseRefusedWhileNetnsExists(t *testing.T) {
	dir := t.TempDir()
	st := disk.New(filepath.Join(dir, "ipam"), disk.Options{})
	eps := filepath.Join(dir, "endpoints")
	netns := filepath.Join(dir, "cni-1234")
	if err := os.WriteFile(netns, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	err := st.Update(context.Background(), func(s *store.State) (bool, error) {
		s.Allocations = append(s.Allocations, store.Allocation{IP: netip.MustParseAddr("10.244.1.5"), ContainerID: "new", IfName: "eth0"})
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	e := endpoint.Endpoint{ContainerID: "new", IfName: "eth0", PodNamespace: "n", PodName: "new", PodUID: "u3",
		HostVeth: "wvnew", Netns: netns, IPs: []string{"10.244.1.5/24"}}
	if err := endpoint.Write(eps, e); err != nil {
		t.Fatal(err)
	}
	d := Deps{Node: "n1", IPAM: st, EndpointDir: eps, PodLive: func(string) bool { return false }, Log: slog.New(slog.DiscardHandler)}
	if _, err := d.releaseAddr(context.Background(), netip.MustParseAddr("10.244.1.5"), "new"); !errors.Is(err, errLive) {
		t.Errorf("release while the pod's netns %s exists: %v, want refused as live", netns, err)
	}
	if err := os.Remove(netns); err != nil {
		t.Fatal(err)
	}
	if r, err := d.releaseAddr(context.Background(), netip.MustParseAddr("10.244.1.5"), "new"); err != nil || r.Released != 1 || !r.RecordRemoved {
		t.Errorf("release after the netns is gone: %+v %v", r, err)
	}
}

// The window of a CNI ADD between weft-ipam's allocation and the record:
// the address has no record yet, but the plugin holds the container's ADD
// lock. The listing says it is being added, and release refuses it (409)
// and keeps it; once the ADD is over (here: it died without a record), the
// address is a leak and release frees it.
func TestReleaseRefusedDuringAdd(t *testing.T) {
	dir := t.TempDir()
	st := disk.New(filepath.Join(dir, "ipam"), disk.Options{})
	eps := filepath.Join(dir, "endpoints")
	add, err := endpoint.LockAdd(context.Background(), eps, "adding")
	if err != nil {
		t.Fatal(err)
	}
	defer add.Unlock()
	ip := netip.MustParseAddr("10.244.1.6")
	err = st.Update(context.Background(), func(s *store.State) (bool, error) {
		s.Allocations = append(s.Allocations, store.Allocation{IP: ip, ContainerID: "adding", IfName: "eth0"})
		return true, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	m := mux{http.NewServeMux()}
	d := Deps{Node: "n1", Status: ready{}, IPAM: st, EndpointDir: eps, PodLive: func(string) bool { return false }, Log: slog.New(slog.DiscardHandler)}
	if err := Register(m, d); err != nil {
		t.Fatal(err)
	}
	list := func() nodeapi.IPAM {
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, httptest.NewRequest("GET", nodeapi.IPAMPath, nil))
		var out nodeapi.IPAM
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || len(out.Allocations) != 1 {
			t.Fatalf("ipam: %d %s %v", rec.Code, rec.Body, err)
		}
		return out
	}
	release := func() (int, string) {
		body, _ := json.Marshal(nodeapi.ReleaseRequest{IP: ip.String(), ContainerID: "adding"})
		rec := httptest.NewRecorder()
		m.ServeHTTP(rec, httptest.NewRequest("POST", nodeapi.ReleasePath, bytes.NewReader(body)))
		return rec.Code, rec.Body.String()
	}
	if a := list().Allocations[0]; !a.Adding {
		t.Errorf("allocation of a running ADD listed as %+v, want adding", a)
	}
	if code, body := release(); code != http.StatusConflict {
		t.Errorf("release during the ADD: %d %s, want 409", code, body)
	}
	if a := list().Allocations[0]; a.IP != ip.String() {
		t.Fatalf("after the refused release: %+v", a)
	}
	add.Unlock()
	if a := list().Allocations[0]; a.Adding {
		t.Errorf("allocation listed as adding after the ADD ended: %+v", a)
	}
	if code, body := release(); code != 200 || !bytes.Contains([]byte(body), []byte(`"released":1`)) {
		t.Errorf("release after the ADD ended: %d %s", code, body)
	}
}
