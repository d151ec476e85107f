package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"sort"

	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/bgp"
	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/daemon/ops"
	"github.com/weftnet/weft/internal/nodeapi"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/ipam/store/disk"
	"github.com/weftnet/weft/policy"
)

// opsFlags configure the operational API (weftctl's routes and /metrics).
type opsFlags struct {
	addr, certFile, keyFile string
	openMetrics             bool
}

func (o *opsFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&o.addr, "api-addr", api.DefaultSecureAddr,
		"HTTPS address of the operational API (/metrics and weftctl's /v1/ routes; every request needs a bearer token that TokenReview and SubjectAccessReview accept; \"\" = off)")
	fs.StringVar(&o.certFile, "tls-cert-file", "", "serving certificate of --api-addr (default: a self-signed one made at start)")
	fs.StringVar(&o.keyFile, "tls-key-file", "", "key of --tls-cert-file")
	fs.BoolVar(&o.openMetrics, "open-metrics", false,
		"also serve /metrics without authentication on --health-addr (opt-in: anyone who reaches the node's port reads them)")
}

// opsServer is the operational API being assembled: rooms add routes to
// routes before or after it serves.
type opsServer struct {
	routes *api.Routes
	deps   ops.Deps
}

func newOpsServer(node string, status *api.Status, pol policyFlags, nk nodeKernel, log *slog.Logger) *opsServer {
	d := ops.Deps{Node: node, Status: status, EndpointDir: pol.endpointDir, Log: log.With("component", "ops-api"),
		BGP: func() nodeapi.BGP { return bgpView(nk.bgp, nk.routes) }}
	if pol.ipamDir != "" {
		d.IPAM = disk.New(pol.ipamDir, disk.Options{})
	}
	return &opsServer{routes: api.NewRoutes(), deps: d}
}

// withPolicy adds the policy engine's trace and its pods to the API.
func (s *opsServer) withPolicy(ctl *policy.Controller) error {
	s.deps.PodLive = ctl.PodLive
	return policy.RegisterOpsAPI(s.routes, ctl, s.deps.Node)
}

// serve registers the node's routes and serves them until ctx ends.
func (s *opsServer) serve(ctx context.Context, o opsFlags, c kubernetes.Interface, m *api.Metrics, fatal func(error)) error {
	if o.addr == "" {
		return nil
	}
	if err := ops.Register(s.routes, s.deps); err != nil {
		return fmt.Errorf("operational API: %w", err)
	}
	tlsCfg, err := api.TLSConfig(o.certFile, o.keyFile, s.deps.Node)
	if err != nil {
		return err
	}
	h := api.SecureHandler(s.routes, m.Registry, api.NewGuard(api.KubeReviewer{Client: c}, s.deps.Log))
	go func() {
		if err := api.ServeTLS(ctx, o.addr, h, tlsCfg, s.deps.Log); err != nil {
			fatal(fmt.Errorf("operational API: %w", err))
		}
	}()
	return nil
}

// bgpView is the bgp backend's sessions and its routes in the node's table.
func bgpView(f *bgp.Factory, routes *route.Table) nodeapi.BGP {
	var out nodeapi.BGP
	if f == nil {
		return out
	}
	snap := f.Snapshot()
	out.Running = snap.Running
	for _, p := range snap.Sessions {
		out.Sessions = append(out.Sessions, nodeapi.BGPSession{Peer: p.Addr.String(), ASN: p.ASN, State: p.State})
	}
	if routes != nil && snap.Running {
		for dst, owner := range routes.Owners() {
			if owner == bgp.Type {
				out.Routes = append(out.Routes, nodeapi.BGPRoute{Prefix: dst.String()})
			}
		}
		sort.Slice(out.Routes, func(i, j int) bool { return out.Routes[i].Prefix < out.Routes[j].Prefix })
	}
	return out
}
