package policy

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/record"

	"github.com/weftnet/weft/policy/rules"
)

// Readiness conditions the controller reports through Health (weftd's
// /readyz lists them with their reasons).
const (
	// CondSync is not met before the first successful sync and while
	// syncs keep failing (SyncFailuresNotReady in a row): no new pod can
	// be programmed, so no pod can start on the node.
	CondSync = "policy-sync"
	// CondBridgeNetfilter is not met while bridged traffic bypasses
	// iptables (same-node pod traffic unpoliced). Re-checked on every
	// resync, so it recovers when the module or sysctl is fixed.
	CondBridgeNetfilter = "bridge-netfilter"
)

// SyncFailuresNotReady is how many syncs in a row must fail before the
// controller reports CondSync not met: one failed iptables-restore that the
// next retry (200 ms later) repairs is not worth flapping readiness.
const SyncFailuresNotReady = 3

// Health receives readiness conditions: reason "" means met. weftd's
// api.Status implements it. Implementations must be safe for concurrent use.
type Health interface {
	Set(cond, reason string)
}

// EventRecorder writes Kubernetes Events; record.EventRecorder implements it.
type EventRecorder interface {
	Eventf(object runtime.Object, eventtype, reason, messageFmt string, args ...any)
}

// EventRepeat is how often an unchanged render error is written again as an
// Event while it lasts (the API server drops Events after an hour).
const EventRepeat = 30 * time.Minute

// ReasonUnenforceable is the reason of the Warning Event written on a
// NetworkPolicy the renderer cannot handle.
const ReasonUnenforceable = "PolicyNotEnforceable"

// NewEventRecorder returns a recorder that writes Events through client as
// weftd on node, and a func that stops it. The broadcaster's correlator
// aggregates and rate-limits on top of the controller's own deduplication.
func NewEventRecorder(client kubernetes.Interface, node string) (EventRecorder, func()) {
	b := record.NewBroadcaster()
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "weftd", Host: node}), b.Shutdown
}

// syncHealth tracks consecutive sync failures for CondSync.
type syncHealth struct {
	mu       sync.Mutex
	synced   bool // a sync has succeeded
	failures int  // consecutive failures since the last success
	lastErr  error
	since    time.Time // first failure of the current run
}

// done records a sync result and returns CondSync's reason ("" = met).
func (h *syncHealth) done(err error) string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err == nil {
		h.synced, h.failures, h.lastErr = true, 0, nil
		return ""
	}
	if h.failures == 0 {
		h.since = time.Now()
	}
	h.failures++
	h.lastErr = err
	return h.reasonLocked()
}

func (h *syncHealth) reasonLocked() string {
	switch {
	case h.failures >= SyncFailuresNotReady:
		return fmt.Sprintf("%d syncs in a row failed since %s, new pods cannot be programmed: %v",
			h.failures, h.since.UTC().Format(time.RFC3339), h.lastErr)
	case !h.synced && h.lastErr != nil:
		return "not yet synced: " + h.lastErr.Error()
	case !h.synced:
		return "not yet synced"
	}
	return ""
}

// Healthy reports whether the controller can program new pods: it has
// synced and syncs are not failing (CondSync met), with the reason if not.
func (c *Controller) Healthy() (bool, string) {
	c.health.mu.Lock()
	defer c.health.mu.Unlock()
	r := c.health.reasonLocked()
	return r == "", r
}

func (c *Controller) setHealth(cond, reason string) {
	if c.cfg.Health != nil {
		c.cfg.Health.Set(cond, reason)
	}
}

// syncDone feeds a sync's result to readiness.
func (c *Controller) syncDone(err error) {
	c.setHealth(CondSync, c.health.done(err))
}

// checkBridgeNetfilter (re-)enables bridge netfilter and reports the result.
func (c *Controller) checkBridgeNetfilter(ctx context.Context) {
	if !c.cfg.BridgeNetfilter {
		return
	}
	err := ensureBridgeNetfilterAt(ctx, c.cfg.BridgeNetfilterSysctl)
	c.mu.Lock()
	was := c.brnfErr
	c.brnfErr = err
	c.mu.Unlock()
	switch {
	case err != nil && (was == nil || was.Error() != err.Error()):
		c.log.Error("bridged pod traffic bypasses policy", "err", err)
	case err == nil && was != nil:
		c.log.Info("bridge netfilter enabled again: same-node pod traffic is policed")
	}
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	c.setHealth(CondBridgeNetfilter, reason)
}

// eventState is the last Event written for one policy.
type eventState struct {
	msg string
	at  time.Time
}

// reportPolicyErrors writes a Warning Event on each policy that fails to
// render, once per distinct message (again after EventRepeat while it
// lasts), not once per sync. Policies that render again are forgotten.
func (c *Controller) reportPolicyErrors(errs []error) {
	if c.cfg.Events == nil {
		return
	}
	now := time.Now()
	keep := make(map[string]bool, len(errs))
	for _, err := range errs {
		var pe *rules.PolicyError
		if !errors.As(err, &pe) {
			continue
		}
		key := pe.Namespace + "/" + pe.Name
		keep[key] = true
		msg := pe.Err.Error()
		if last, ok := c.events[key]; ok && last.msg == msg && now.Sub(last.at) < EventRepeat {
			continue
		}
		np, gerr := c.pols.NetworkPolicies(pe.Namespace).Get(pe.Name)
		if gerr != nil {
			continue // deleted meanwhile
		}
		c.cfg.Events.Eventf(np, corev1.EventTypeWarning, ReasonUnenforceable,
			"cannot be enforced on node %s, the pods it selects there fail closed (all their traffic is dropped): %s",
			c.cfg.NodeName, strings.TrimSpace(msg))
		c.events[key] = eventState{msg: msg, at: now}
	}
	for k := range c.events {
		if !keep[k] {
			delete(c.events, k)
		}
	}
}
