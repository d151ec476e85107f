package policy

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/client-go/informers"
)

// NodeOptions configures NewNodeController.
type NodeOptions struct {
	NodeName       string
	EndpointDir    string        // "" = endpoint.DefaultDir
	ResyncInterval time.Duration // "" = 30s
	Metrics        Metrics       // may be nil
	Log            *slog.Logger  // may be nil
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
	w, mode, err := NewNodeWriter(ctx, "", log)
	if err != nil {
		return nil, nil, fmt.Errorf("policy: dataplane: %w", err)
	}
	log.Info("network policy dataplane", "iptables", mode, "node", opt.NodeName)
	c, err = NewController(factory, ControllerConfig{NodeName: opt.NodeName, EndpointDir: opt.EndpointDir, Dataplane: w,
		Render: DefaultConfig(), ResyncInterval: opt.ResyncInterval, Metrics: opt.Metrics, Log: log, BridgeNetfilter: true})
	if err != nil {
		w.Close()
		return nil, nil, err
	}
	return c, w.Close, nil
}
