package policy

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/netip"

	"k8s.io/apimachinery/pkg/labels"

	"github.com/weftnet/weft/internal/nodeapi"
	"github.com/weftnet/weft/policy/rules"
)

// maxTraceFlows bounds one trace request.
const maxTraceFlows = 4096

// ErrNotSynced: nothing was programmed yet, so there is nothing to trace.
var ErrNotSynced = errors.New("policy engine has not programmed this node yet")

// TraceFlows walks each flow's first packet through the rules in this
// node's kernel as of the last successful sync (the State that was
// applied, with the ipsets' members), from FORWARD: egress when the source
// is a local pod, ingress when the destination is, both when both are.
// A flow with neither end here is "none" and passes.
func (c *Controller) TraceFlows(flows []nodeapi.Flow) ([]nodeapi.Trace, error) {
	c.mu.Lock()
	st, eps := c.last, c.lastEps
	c.mu.Unlock()
	if st == nil {
		return nil, ErrNotSynced
	}
	vethOf := map[netip.Addr]string{}
	for _, e := range eps {
		addrs, _ := e.Addrs()
		for _, a := range addrs {
			vethOf[a] = e.HostVeth
		}
	}
	tr := st.Tracer("FORWARD")
	out := make([]nodeapi.Trace, 0, len(flows))
	for _, f := range flows {
		t := nodeapi.Trace{Flow: f, Local: "none", Verdict: rules.Pass.String(), Allowed: true}
		src, err1 := netip.ParseAddr(f.Src)
		dst, err2 := netip.ParseAddr(f.Dst)
		if err1 != nil || err2 != nil {
			return nil, errors.New("trace: src and dst must be addresses")
		}
		_, sl := vethOf[src]
		_, dl := vethOf[dst]
		t.Local = map[[2]bool]string{{true, false}: "source", {false, true}: "destination", {true, true}: "both", {false, false}: "none"}[[2]bool{sl, dl}]
		if sl || dl {
			res := tr.Trace(forwardPacket(c.cfg.Render.Bridge, src, dst, f.Proto, f.Port, false, vethOf))
			t.Verdict, t.Allowed = res.Verdict.String(), res.Allowed()
			for _, h := range res.Hits {
				t.Hits = append(t.Hits, nodeapi.Hit{Chain: h.Chain, Index: h.Index, Rule: h.Rule, Comment: h.Comment})
			}
		}
		out = append(out, t)
	}
	return out, nil
}

// PodLive reports whether the informer holds a pod with this UID.
func (c *Controller) PodLive(uid string) bool {
	pods, err := c.pods.List(labels.Everything())
	if err != nil {
		return true // unknown: refuse rather than free a live pod's address
	}
	for _, p := range pods {
		if string(p.UID) == uid {
			return true
		}
	}
	return false
}

// RegisterOpsAPI puts the trace (nodeapi.TracePath, POST TraceRequest) on
// the operational API's route table.
func RegisterOpsAPI(r Router, c *Controller, node string) error {
	return r.Handle(nodeapi.TracePath, http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodPost {
			http.Error(w, "use POST", http.StatusMethodNotAllowed)
			return
		}
		var in nodeapi.TraceRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, req.Body, 1<<20)).Decode(&in); err != nil || len(in.Flows) > maxTraceFlows {
			http.Error(w, "want a TraceRequest of at most 4096 flows", http.StatusBadRequest)
			return
		}
		traces, err := c.TraceFlows(in.Flows)
		if errors.Is(err, ErrNotSynced) {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(nodeapi.TraceAnswer{Node: node, Traces: traces})
	}))
}
