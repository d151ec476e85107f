// Package ops is weftd's half of weftctl: the handlers of the operational
// API (internal/nodeapi) that read this node's state — readiness, weft-ipam's
// allocations with the pods the plugin recorded, BGP sessions — and the two
// that act: releasing a leaked address and probing from a local pod. They
// are registered on the secure route table (daemon/api), which
// authenticates and authorizes every request; the policy engine registers
// the trace itself (policy.RegisterOpsAPI).
package ops

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"sort"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/nodeapi"
	"github.com/weftnet/weft/ipam/store"
)

// Router is the secure route table (daemon/api.Routes).
type Router interface {
	Handle(path string, h http.Handler) error
}

// Readiness is the agent's status (daemon/api.Status).
type Readiness interface {
	Ready() (bool, []string)
	Details() []string
}

// Store is weft-ipam's store of the node's network (ipam/store/disk).
type Store interface {
	View(ctx context.Context, fn func(*store.State) error) error
	Update(ctx context.Context, fn store.UpdateFunc) error
}

// Deps is what the handlers read. IPAM nil: no ipam routes (no store);
// PodLive nil: a release does not check the API's pods; BGP nil: no bgp.
type Deps struct {
	Node        string
	Status      Readiness
	IPAM        Store
	EndpointDir string
	// PodLive reports whether a pod with this UID exists (the policy
	// engine's informer): a release of an address whose recorded pod is
	// still there is refused.
	PodLive func(uid string) bool
	BGP     func() nodeapi.BGP
	Log     *slog.Logger
}

// Register puts the handlers on r.
func Register(r Router, d Deps) error {
	routes := map[string]http.HandlerFunc{nodeapi.NodePath: d.node, nodeapi.ProbePath: d.probe}
	if d.IPAM != nil {
		routes[nodeapi.IPAMPath], routes[nodeapi.ReleasePath] = d.ipam, d.release
	}
	if d.BGP != nil {
		routes[nodeapi.BGPPath] = d.bgp
	}
	for p, h := range routes {
		if err := r.Handle(p, h); err != nil {
			return err
		}
	}
	return nil
}

// WriteJSON answers v as JSON.
func WriteJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// method answers 405 unless r uses want.
func method(w http.ResponseWriter, r *http.Request, want string) bool {
	if r.Method != want {
		http.Error(w, "use "+want, http.StatusMethodNotAllowed)
		return false
	}
	return true
}

func (d Deps) node(w http.ResponseWriter, r *http.Request) {
	if !method(w, r, http.MethodGet) {
		return
	}
	ok, reasons := d.Status.Ready()
	WriteJSON(w, nodeapi.NodeStatus{Node: d.Node, Ready: ok, Reasons: reasons, Details: d.Status.Details()})
}

func (d Deps) bgp(w http.ResponseWriter, r *http.Request) {
	if !method(w, r, http.MethodGet) {
		return
	}
	b := d.BGP()
	b.Node = d.Node
	WriteJSON(w, b)
}

// ipam lists the store's allocations joined with the endpoint records by
// container ID and ifname, marking those without a record whose ADD still
// runs.
func (d Deps) ipam(w http.ResponseWriter, r *http.Request) {
	if !method(w, r, http.MethodGet) {
		return
	}
	byAtt := d.records()
	out := nodeapi.IPAM{Node: d.Node, Allocations: []nodeapi.Allocation{}}
	err := d.IPAM.View(r.Context(), func(st *store.State) error {
		for _, a := range st.Allocations {
			out.Allocations = append(out.Allocations, nodeapi.Allocation{IP: a.IP.String(), ContainerID: a.ContainerID, IfName: a.IfName})
		}
		return nil
	})
	if err != nil {
		http.Error(w, "ipam store: "+err.Error(), http.StatusInternalServerError)
		return
	}
	// An allocation without a record is an ADD still running (it holds
	// its lock from before the allocation until the record is written) or
	// a leak. The records are read again once the lock is seen free: an
	// ADD that finished since the first read has written its record.
	again := false
	for i := range out.Allocations {
		join(&out.Allocations[i], byAtt)
		al := &out.Allocations[i]
		if al.HostVeth == "" && d.EndpointDir != "" {
			al.Adding = endpoint.Adding(d.EndpointDir, al.ContainerID)
			again = again || !al.Adding
		}
	}
	if again {
		byAtt = d.records()
		for i := range out.Allocations {
			if !out.Allocations[i].Adding {
				join(&out.Allocations[i], byAtt)
			}
		}
	}
	sort.Slice(out.Allocations, func(i, j int) bool { return out.Allocations[i].IP < out.Allocations[j].IP })
	WriteJSON(w, out)
}

// attKey names an attachment.
type attKey struct{ id, ifname string }

// records are the endpoint records by attachment.
func (d Deps) records() map[attKey]endpoint.Endpoint {
	recs, err := endpoint.List(d.EndpointDir)
	if err != nil {
		d.Log.Warn("ipam: endpoint records skipped", "err", err)
	}
	byAtt := map[attKey]endpoint.Endpoint{}
	for _, e := range recs {
		byAtt[attKey{e.ContainerID, e.IfName}] = e
	}
	return byAtt
}

// join fills in the pod of al's record, if there is one.
func join(al *nodeapi.Allocation, byAtt map[attKey]endpoint.Endpoint) {
	if e, ok := byAtt[attKey{al.ContainerID, al.IfName}]; ok {
		al.PodNamespace, al.PodName, al.PodUID, al.HostVeth = e.PodNamespace, e.PodName, e.PodUID, e.HostVeth
	}
}

// errLive refuses a release whose recorded pod still exists; errAdding
// one whose container's CNI ADD is still running.
var (
	errLive   = errors.New("the pod recorded for this address still exists")
	errAdding = errors.New("a CNI ADD of this container is in progress")
)

// release frees one address held by the named container, and the
// attachment's endpoint record if it is still there (its pod is gone).
func (d Deps) release(w http.ResponseWriter, r *http.Request) {
	if !method(w, r, http.MethodPost) {
		return
	}
	var req nodeapi.ReleaseRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	ip, err := netip.ParseAddr(req.IP)
	if err != nil || req.ContainerID == "" {
		http.Error(w, "want an ip and the containerID that holds it", http.StatusBadRequest)
		return
	}
	res, err := d.releaseAddr(r.Context(), ip, req.ContainerID)
	switch {
	case errors.Is(err, errLive), errors.Is(err, errAdding):
		http.Error(w, err.Error(), http.StatusConflict)
	case err != nil:
		http.Error(w, err.Error(), http.StatusInternalServerError)
	default:
		d.Log.Info("ipam: address released by an operator", "ip", ip, "container", req.ContainerID, "record_removed", res.RecordRemoved)
		WriteJSON(w, res)
	}
}

func (d Deps) releaseAddr(ctx context.Context, ip netip.Addr, containerID string) (nodeapi.ReleaseResult, error) {
	var res nodeapi.ReleaseResult
	// Held until the address is freed: no ADD of this container starts
	// allocating or recording meanwhile, and one under way is refused.
	if d.EndpointDir != "" {
		lk, err := endpoint.TryLockAdd(d.EndpointDir, containerID)
		if endpoint.IsBusy(err) {
			return res, fmt.Errorf("%s (container %s): %w", ip, containerID, errAdding)
		}
		if err != nil {
			return res, err
		}
		defer lk.Unlock()
	}
	recs, _ := endpoint.List(d.EndpointDir)
	var stale []endpoint.Endpoint
	for _, e := range recs {
		addrs, _ := e.Addrs()
		if e.ContainerID != containerID || len(addrs) > 0 && !slices.Contains(addrs, ip) {
			continue
		}
		if d.PodLive != nil && e.PodUID != "" && d.PodLive(e.PodUID) {
			return res, fmt.Errorf("%s (%s/%s): %w", ip, e.PodNamespace, e.PodName, errLive)
		}
		// The informer lags a pod created a moment ago; the runtime
		// removes the sandbox's netns only when the pod is gone.
		if _, err := os.Stat(e.Netns); e.Netns != "" && err == nil {
			return res, fmt.Errorf("%s (%s/%s, network namespace %s): %w", ip, e.PodNamespace, e.PodName, e.Netns, errLive)
		}
		stale = append(stale, e)
	}
	err := d.IPAM.Update(ctx, func(st *store.State) (bool, error) {
		res.Released = st.Release(func(a store.Allocation) bool { return a.IP == ip && a.ContainerID == containerID })
		return res.Released > 0, nil
	})
	if err != nil {
		return res, fmt.Errorf("ipam store: %w", err)
	}
	for _, e := range stale {
		if err := endpoint.Remove(d.EndpointDir, e.HostVeth); err != nil {
			return res, fmt.Errorf("remove endpoint record %s: %w", e.HostVeth, err)
		}
		res.RecordRemoved = true
	}
	return res, nil
}
