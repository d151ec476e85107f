package shaping

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/endpoint/record"
)

// PodSource gives the live annotations of a pod on this node (weftd: its
// Pod informer). ok is false when it does not know the pod.
type PodSource interface {
	Pod(namespace, name string) (uid string, annotations map[string]string, ok bool)
}

// Recorder reports a rejected live change on the pod (weftd: a Warning
// Event).
type Recorder interface {
	Warn(namespace, name, uid, reason, message string)
}

// ReasonInvalid is the Event reason of a rejected bandwidth annotation.
const ReasonInvalid = "InvalidBandwidth"

// Reconciler converges the node's shaping: every endpoint record (the
// attachments on this node), each with the bandwidth of its Pod's live
// annotations when the PodSource knows the pod, else what the runtime
// passed at ADD (kept in the record). A live change that is invalid keeps
// the pod's previous limit and is reported once.
type Reconciler struct {
	Config      Config
	MTU         int
	EndpointDir string
	Kernel      Kernel
	Pods        PodSource // may be nil
	Events      Recorder  // may be nil
	Log         *slog.Logger

	mu       sync.Mutex
	off      bool                       // weftd's section is absent: remove everything
	waiting  bool                       // weftd has not read its configuration yet: touch nothing
	records  map[string]record.Endpoint // the endpoint records, re-read on every full sync
	minors   map[string]uint16
	lastGood map[string][2]Request
	warned   map[string]string
	applied  Desired
}

// Sync computes the desired state from the records and the pods and
// converges it in one Apply.
func (r *Reconciler) Sync(ctx context.Context, full bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.syncLocked(ctx, full)
}

func (r *Reconciler) syncLocked(ctx context.Context, full bool) error {
	if r.waiting {
		return nil // a restarted weftd keeps what it finds until it knows the section
	}
	if r.off {
		n, err := r.Kernel.Apply(ctx, Desired{Off: true}, true)
		if n > 0 && err == nil && r.Log != nil {
			r.Log.Info("bandwidth shaping off: removed the trees and redirects", "changes", n)
		}
		r.applied = Desired{Off: true}
		return err
	}
	if full || r.records == nil {
		recs, err := endpoint.List(r.EndpointDir)
		if err != nil {
			return fmt.Errorf("endpoint records: %w", err)
		}
		r.records = map[string]record.Endpoint{}
		for _, rec := range recs {
			r.records[rec.HostVeth] = rec
		}
	}
	if r.lastGood == nil {
		r.lastGood, r.warned = map[string][2]Request{}, map[string]string{}
	}
	var pods []Pod
	seen := map[string]bool{}
	for _, rec := range r.records {
		req, ok := r.request(rec)
		if !ok {
			continue
		}
		seen[rec.HostVeth] = true
		addrs, _ := rec.Addrs()
		pods = append(pods, Pod{Veth: rec.HostVeth, Addrs: addrs, Dir: req})
	}
	for v := range r.lastGood {
		if !seen[v] {
			delete(r.lastGood, v)
			delete(r.warned, v)
		}
	}
	d, minors := Compute(r.Config, r.MTU, pods, r.minors)
	n, err := r.Kernel.Apply(ctx, d, full)
	if err != nil && !full {
		// Something changed behind weftd's back: read it all back now.
		n, err = r.Kernel.Apply(ctx, d, true)
	}
	if err != nil {
		return fmt.Errorf("apply shaping: %w", err)
	}
	r.minors, r.applied = minors, d
	if n > 0 && r.Log != nil {
		r.Log.Info("bandwidth shaping converged", "pods", len(d.Redirects), "changes", n)
	}
	return nil
}

// request is the record's bandwidth: from the live pod when known, else
// from the record; ok is false when the pod is not shaped.
func (r *Reconciler) request(rec record.Endpoint) ([2]Request, bool) {
	var bursts [2]uint64
	var ann map[string]string
	if bw := rec.Bandwidth; bw != nil {
		bursts = [2]uint64{Egress: bw.EgressBurst, Ingress: bw.IngressBurst}
		ann = recordAnnotations(bw)
	}
	live := false
	if r.Pods != nil {
		if uid, a, ok := r.Pods.Pod(rec.PodNamespace, rec.PodName); ok && (rec.PodUID == "" || uid == "" || uid == rec.PodUID) {
			ann, live = a, true
		}
	}
	req, err := r.Config.Requests(ann, bursts)
	if err == nil {
		r.lastGood[rec.HostVeth] = req
		delete(r.warned, rec.HostVeth)
		return req, req[Egress].Rate > 0 || req[Ingress].Rate > 0
	}
	old, had := r.lastGood[rec.HostVeth]
	if live && r.warned[rec.HostVeth] != err.Error() {
		r.warned[rec.HostVeth] = err.Error()
		msg := err.Error() + "; the previous limit stays"
		if !had {
			msg = err.Error() + "; the pod is not shaped"
		}
		if r.Log != nil {
			r.Log.Warn("bandwidth annotation rejected", "pod", rec.PodNamespace+"/"+rec.PodName, "err", err)
		}
		if r.Events != nil {
			r.Events.Warn(rec.PodNamespace, rec.PodName, rec.PodUID, ReasonInvalid, msg)
		}
	}
	return old, had && (old[Egress].Rate > 0 || old[Ingress].Rate > 0)
}

func recordAnnotations(bw *record.Bandwidth) map[string]string {
	ann := map[string]string{}
	if bw.Ingress != "" {
		ann[AnnotationIngress] = bw.Ingress
	}
	if bw.Egress != "" {
		ann[AnnotationEgress] = bw.Egress
	}
	return ann
}

// Requests reads a pod's bandwidth annotations and checks them against
// the configuration; the error names the annotation. bursts are the
// runtime's, in bits.
func (c Config) Requests(ann map[string]string, bursts [2]uint64) ([2]Request, error) {
	var out [2]Request
	var errs []error
	for _, d := range []Direction{Egress, Ingress} {
		v, ok := ann[d.Annotation()]
		if !ok {
			continue
		}
		rate, err := ParseQuantity(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("annotation %s=%q: %w", d.Annotation(), v, err))
			continue
		}
		out[d] = Request{Rate: rate, Burst: bursts[d]}
		if err := c.Check(d, out[d]); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return [2]Request{}, errors.Join(errs...)
	}
	return out, nil
}

// Admit is the plugin's ADD: the attachment's record must exist and its
// ADD-time request be valid (else the error names the annotation and
// nothing is applied); then the node converges with it.
func (r *Reconciler) Admit(ctx context.Context, veth string) error {
	// The record is read under the lock: a failed ADD removes it and calls
	// Release (which takes the lock) at any moment, and a record read
	// before that removal must not be put back after Release forgot it.
	r.mu.Lock()
	defer r.mu.Unlock()
	rec, ok, err := endpoint.Read(r.EndpointDir, veth)
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("no endpoint record for %s", veth)
	}
	if r.off || r.waiting {
		return errors.New("weftd does not shape (no bandwidth section in net-conf.json)")
	}
	if rec.Bandwidth != nil {
		if _, err := r.Config.Requests(recordAnnotations(rec.Bandwidth), [2]uint64{}); err != nil {
			return &InvalidError{Err: err}
		}
	}
	// A re-ADD of a veth already shaped (a duplicate ADD, or the retry of
	// an ADD that died after writing its record, which recreates the veth
	// under the same name) may find kernel objects other than the ones the
	// last Apply wrote: read everything back. A first ADD writes only what
	// it adds.
	_, readd := r.records[veth]
	if r.records != nil {
		r.records[veth] = rec
	}
	return r.syncLocked(ctx, readd)
}

// Release forgets the attachment of veth once its record is gone (the
// plugin's DEL); the next sync removes its classes.
func (r *Reconciler) Release(veth string) error {
	_, ok, err := endpoint.Read(r.EndpointDir, veth)
	if err != nil || ok {
		return err // still there: a full sync decides
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.records, veth)
	return nil
}

// InvalidError is a request that can never be applied (the plugin fails
// ADD with it, naming the annotation).
type InvalidError struct{ Err error }

func (e *InvalidError) Error() string { return e.Err.Error() }
func (e *InvalidError) Unwrap() error { return e.Err }

// SetPods sets the pod source and the event recorder (weftd: once its
// Pod informer exists).
func (r *Reconciler) SetPods(p PodSource, e Recorder) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.Pods, r.Events = p, e
}

// Current returns the configuration in use.
func (r *Reconciler) Current() Config {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.Config
}

// Applied returns the last desired state converged.
func (r *Reconciler) Applied() Desired {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.applied
}
