package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/policy"
)

// DefaultSocket is weftd's local API socket: the CNI plugin asks it whether
// a new pod's policy rules are in place before ADD returns.
const DefaultSocket = "/run/weft/weftd.sock"

// policyFlags configure NetworkPolicy enforcement.
type policyFlags struct {
	enabled     bool
	endpointDir string
	socket      string
	resync      time.Duration
}

func (p *policyFlags) register(fs *flag.FlagSet) {
	fs.BoolVar(&p.enabled, "network-policy", true, "enforce NetworkPolicy on this node")
	fs.StringVar(&p.endpointDir, "endpoint-dir", endpoint.DefaultDir, "where the CNI plugin records pod attachments")
	fs.StringVar(&p.socket, "socket", DefaultSocket, "local API socket (the CNI plugin waits on it for a pod's policy rules)")
	fs.DurationVar(&p.resync, "policy-resync", 10*time.Second, "period of the policy read-back that repairs rules changed by hand")
}

// start runs the policy controller and the local socket until ctx ends;
// errors of the socket server go to errc. The returned func releases the
// dataplane once the controller has stopped.
func (p *policyFlags) start(ctx context.Context, client kubernetes.Interface, node string, reg prometheus.Registerer,
	errc chan<- error, log *slog.Logger) (func(), error) {
	m, err := policy.NewPrometheusMetrics(reg)
	if err != nil {
		return nil, fmt.Errorf("policy metrics: %w", err)
	}
	factory := informers.NewSharedInformerFactory(client, 0)
	ctl, closeFn, err := policy.NewNodeController(ctx, factory, policy.NodeOptions{
		NodeName: node, EndpointDir: p.endpointDir, ResyncInterval: p.resync, Metrics: m, Log: log})
	if err != nil {
		return nil, err
	}
	if err := policy.RegisterSpoofedPackets(reg, ctl); err != nil {
		_ = closeFn()
		return nil, fmt.Errorf("policy metrics: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := ctl.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("policy controller stopped", "err", err)
		}
	}()
	mux := http.NewServeMux()
	mux.Handle(policy.ProgrammedPath, policy.ProgrammedHandler(ctl))
	go func() {
		err := api.ServeUnix(ctx, p.socket, mux, log)
		if err != nil {
			// Without the socket no pod's ADD can confirm its rules.
			log.Error("local API socket failed: new pods cannot start", "socket", p.socket, "err", err)
		}
		errc <- err
	}()
	return func() {
		<-done
		if err := closeFn(); err != nil {
			log.Warn("policy dataplane close", "err", err)
		}
	}, nil
}
