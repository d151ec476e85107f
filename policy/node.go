package policy

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/client-go/informers"

	"github.com/weftnet/weft/internal/conntrack"

	"github.com/weftnet/weft/policy/rules"
)

// NodeOptions configures NewNodeController.
type NodeOptions struct {
	NodeName       string
	NetNS          string        // network namespace path; "" = the caller's (weftd: the node's)
	Bridge         string        // the pod bridge; "" = weft0
	EndpointDir    string        // "" = endpoint.DefaultDir
	ResyncInterval time.Duration // "" = 30s
	Metrics        Metrics       // may be nil
	Log            *slog.Logger  // may be nil
	Health         Health        // readiness conditions; may be nil
	Events         EventRecorder // Warning Events on unenforceable policies; may be nil
	// Attachments, when set, is the node's IPAM store: missing endpoint
	// records are rebuilt from it and the bridge's veths at start.
	Attachments AttachmentSource
}

// NewNodeController is weftd's one-call wiring: the real dataplane for the
// calling process's network namespace (iptables backend detected, ipsets
// over netlink), bridge netfilter switched on, and a Controller over the
// factory's informers. Run the controller; call closeFn when it returned.
func NewNodeController(ctx context.Context, factory informers.SharedInformerFactory, opt NodeOptions) (c *Controller, closeFn func() error, err error) {
	log := opt.Log
	if log == nil {
		log = slog.Default()
	}
	w, mode, err := NewNodeWriter(ctx, opt.NetNS, log)
	if err != nil {
		return nil, nil, fmt.Errorf("policy: dataplane: %w", err)
	}
	log.Info("network policy dataplane", "iptables", mode, "node", opt.NodeName)
	if opt.NetNS != "" { // the controller switches it on only in its own namespace
		err := ns.WithNetNSPath(opt.NetNS, func(ns.NetNS) error { return EnsureBridgeNetfilter(ctx) })
		if err != nil {
			log.Error("bridged pod traffic bypasses policy", "err", err)
		}
	}
	ct, err := conntrack.OpenAt(opt.NetNS)
	if err != nil { // policy still works; established flows outlive a deny
		log.Error("conntrack unavailable: flows a policy change denies are not cut", "err", err)
	}
	rc := rules.DefaultConfig()
	if opt.Bridge != "" {
		rc.Bridge = opt.Bridge
	}
	var rb *EndpointRebuild
	if opt.Attachments != nil {
		rb = &EndpointRebuild{Attachments: opt.Attachments, Veths: BridgeVeths{NetNS: opt.NetNS, Bridge: rc.Bridge}}
	}
	c, err = NewController(factory, ControllerConfig{NodeName: opt.NodeName, EndpointDir: opt.EndpointDir, Dataplane: w,
		Render: rc, ResyncInterval: opt.ResyncInterval, Metrics: opt.Metrics, Log: log, BridgeNetfilter: opt.NetNS == "",
		Health: opt.Health, Events: opt.Events, Rebuild: rb, Conntrack: conntrackOrNil(ct)})
	closeAll := func() error {
		if ct != nil {
			ct.Close()
		}
		return w.Close()
	}
	if err != nil {
		_ = closeAll()
		return nil, nil, err
	}
	return c, closeAll, nil
}

// Uninstall removes every chain, jump and ipset the policy engine owns from
// the network namespace at netns ("" = the caller's). Nothing else is
// touched. Pods lose their isolation: for weftd's uninstall only.
func Uninstall(ctx context.Context, netns string) error {
	w, _, err := NewNodeWriter(ctx, netns, nil)
	if err != nil {
		return err
	}
	defer w.Close()
	if _, err := w.Apply(ctx, &rules.State{}, true); err != nil {
		return fmt.Errorf("policy: uninstall: %w", err)
	}
	return nil
}

// conntrackOrNil keeps a nil *conntrack.Kernel from becoming a non-nil
// interface.
func conntrackOrNil(k *conntrack.Kernel) ConntrackTable {
	if k == nil {
		return nil
	}
	return k
}
