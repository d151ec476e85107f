package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/ipam"
	"github.com/weftnet/weft/ipam/store/disk"
	"github.com/weftnet/weft/policy"
)

// policyFlags configure NetworkPolicy enforcement.
type policyFlags struct {
	enabled     bool
	endpointDir string
	socket      string
	resync      time.Duration
	ipamDir     string
}

func (p *policyFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&p.enabled, "network-policy", true, "enforce NetworkPolicy on this node")
	fs.StringVar(&p.endpointDir, "endpoint-dir", endpoint.DefaultDir, "where the CNI plugin records pod attachments")
	fs.StringVar(&p.socket, "socket", api.DefaultSocket, "local API socket (the CNI plugin waits on it for a pod's policy rules)")
	fs.DurationVar(&p.resync, "policy-resync", 10*time.Second, "period of the policy read-back that repairs rules changed by hand")
	fs.StringVar(&p.ipamDir, "ipam-data-dir", filepath.Join(ipam.DefaultDataDir, install.NetworkName),
		"weft-ipam's store of this node's network; missing endpoint records are rebuilt from it at start (\"\" = never)")
}

// policyDeps are what the policy engine reports to and through.
type policyDeps struct {
	client kubernetes.Interface
	node   string
	reg    prometheus.Registerer
	health policy.Health
	// fatal stops weftd with err: a local socket that cannot be served
	// means no pod can start, and must not wait for the agent to return.
	fatal func(error)
	log   *slog.Logger
	ops   *opsServer // the operational API the trace joins (nil: none)
	// extra are more routes of the local socket (bandwidth shaping's).
	extra map[string]http.Handler
}

// attachments is the IPAM store records are rebuilt from (nil: none).
func (p *policyFlags) attachments() policy.AttachmentSource {
	if p.ipamDir == "" {
		return nil
	}
	return ipamAttachments{store: disk.New(p.ipamDir, disk.Options{})}
}

// start runs the policy controller and the local socket until ctx ends.
// The returned func releases the dataplane once the controller has stopped.
func (p *policyFlags) start(ctx context.Context, d policyDeps) (func(), error) {
	m, err := policy.NewPrometheusMetrics(d.reg)
	if err != nil {
		return nil, fmt.Errorf("policy metrics: %w", err)
	}
	events, stopEvents := policy.NewEventRecorder(d.client, d.node)
	factory := informers.NewSharedInformerFactory(d.client, 0)
	ctl, closeFn, err := policy.NewNodeController(ctx, factory, policy.NodeOptions{
		NodeName: d.node, EndpointDir: p.endpointDir, ResyncInterval: p.resync, Metrics: m, Log: d.log,
		Health: d.health, Events: events, Attachments: p.attachments()})
	if err != nil {
		stopEvents()
		return nil, err
	}
	if err := policy.RegisterSpoofedPackets(d.reg, ctl); err != nil {
		stopEvents()
		_ = closeFn()
		return nil, fmt.Errorf("policy metrics: %w", err)
	}
	routes := api.NewRoutes()
	cniMetrics, err := api.NewCNIMetrics(d.reg)
	if err == nil {
		err = cniMetrics.Register(routes)
	}
	if err == nil {
		err = policy.RegisterLocalAPI(routes, ctl)
	}
	for path, h := range d.extra {
		if err == nil {
			err = routes.Handle(path, h)
		}
	}
	if err != nil {
		stopEvents()
		_ = closeFn()
		return nil, fmt.Errorf("local API: %w", err)
	}
	if d.ops != nil {
		if err := d.ops.withPolicy(ctl); err != nil {
			stopEvents()
			_ = closeFn()
			return nil, fmt.Errorf("operational API: %w", err)
		}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := ctl.Run(ctx); err != nil && ctx.Err() == nil {
			d.log.Error("policy controller stopped", "err", err)
			d.fatal(fmt.Errorf("policy controller: %w", err))
		}
	}()
	sock := &api.LocalSocket{Path: p.socket, Routes: routes, Health: d.health, Period: min(p.resync, 10*time.Second), Log: d.log}
	go func() {
		if err := sock.Run(ctx); err != nil {
			d.log.Error("local API socket failed: new pods cannot start", "socket", p.socket, "err", err)
			d.fatal(err)
		}
	}()
	return func() {
		<-done
		stopEvents()
		if err := closeFn(); err != nil {
			d.log.Warn("policy dataplane close", "err", err)
		}
	}, nil
}
