// Package api serves weftd's HTTP endpoints: /healthz (the agent's loop is
// alive) and /readyz (the node can carry pod traffic: lease held, backend
// converged, conflist written; otherwise the reasons), open for probes on
// 0.0.0.0:9412; the operational API on HTTPS 0.0.0.0:9413 (/metrics and
// weftctl's routes, internal/nodeapi), every request authenticated with
// TokenReview and authorized with SubjectAccessReview (Guard); and the local unix socket
// (DefaultSocket) with its route table (Routes): each room registers its
// handlers there (the policy engine the plugin's "programmed" wait and CNI
// STATUS), LocalSocket serves it and listens again when the file is
// removed. The clients of the socket's paths live in internal/endpoint.
package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// DefaultAddr is where weftd serves health and metrics.
const DefaultAddr = "0.0.0.0:9412"

// Readiness conditions.
const (
	CondConfig   = "config"
	CondLease    = "lease"
	CondBackend  = "backend"
	CondConflist = "conflist"
	CondMasq     = "masquerade"
	// CondSocket: the local API socket (the plugin's ADD waits on it for
	// a pod's policy rules) does not answer. The policy engine adds its
	// own conditions (policy.CondSync, policy.CondBridgeNetfilter).
	CondSocket = "policy-socket"
)

// Status is the agent's shared view of its health, safe for concurrent use.
type Status struct {
	mu       sync.Mutex
	notReady map[string]string // condition -> reason
	details  map[string]string // informational, e.g. other CNI configs
	beat     time.Time
}

// NewStatus returns a status where every condition is not yet met.
func NewStatus() *Status {
	s := &Status{notReady: map[string]string{}, details: map[string]string{}}
	for _, c := range []string{CondConfig, CondLease, CondBackend, CondConflist} {
		s.notReady[c] = "not yet synced"
	}
	s.beat = time.Now()
	return s
}

// Set marks cond as met (reason "") or not met with reason.
func (s *Status) Set(cond, reason string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if reason == "" {
		delete(s.notReady, cond)
	} else {
		s.notReady[cond] = reason
	}
}

// Detail records (or with "" clears) an informational line for /readyz.
func (s *Status) Detail(key, value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if value == "" {
		delete(s.details, key)
	} else {
		s.details[key] = value
	}
}

// Beat records that the agent's loop is alive.
func (s *Status) Beat() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.beat = time.Now()
}

// Met reports whether cond holds now.
func (s *Status) Met(cond string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, bad := s.notReady[cond]
	return !bad
}

// Ready returns whether all conditions hold, and the reasons if not.
func (s *Status) Ready() (bool, []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, c := range slices.Sorted(maps.Keys(s.notReady)) {
		out = append(out, c+": "+s.notReady[c])
	}
	return len(out) == 0, out
}

func (s *Status) alive(maxAge time.Duration) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return time.Since(s.beat) <= maxAge
}

// Details returns the informational lines of /readyz ("key: value").
func (s *Status) Details() []string { return s.detailLines() }

func (s *Status) detailLines() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, k := range slices.Sorted(maps.Keys(s.details)) {
		out = append(out, k+": "+s.details[k])
	}
	return out
}

// Handler returns the open HTTP handler of probes: /healthz and /readyz,
// and /metrics without authentication only when reg is not nil (weftd's
// --open-metrics opt-in; by default /metrics is on the secure port).
// maxBeatAge bounds how long the agent loop may be silent before /healthz
// fails.
func Handler(s *Status, reg *prometheus.Registry, maxBeatAge time.Duration) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if !s.alive(maxBeatAge) {
			http.Error(w, "agent loop stalled", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reasons := s.Ready()
		var b strings.Builder
		if ok {
			b.WriteString("ok\n")
		} else {
			b.WriteString("not ready\n")
			for _, r := range reasons {
				b.WriteString("- " + r + "\n")
			}
		}
		for _, d := range s.detailLines() {
			b.WriteString("info: " + d + "\n")
		}
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(b.String()))
	})
	if reg != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	}
	return mux
}

// Serve listens on addr and serves h until ctx ends.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen %s: %w", addr, err)
	}
	return serve(ctx, ln, addr, h, tcpTimeouts, log)
}

// ServeUnix serves h on a unix socket at path (the local API the CNI plugin
// and weftctl ask), replacing a stale socket left by an earlier weftd.
func ServeUnix(ctx context.Context, path string, h http.Handler, log *slog.Logger) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("socket dir: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove stale socket %s: %w", path, err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return fmt.Errorf("listen %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("socket %s: %w", path, err)
	}
	return serve(ctx, ln, path, h, unixTimeouts, log)
}

// timeouts bound a server's connections.
type timeouts struct{ readHeader, write, idle time.Duration }

// tcpTimeouts are the health and operational servers': idle keep-alive
// connections close after 90 s, and a response must be written within a
// minute (a probe takes at most 10 s, a trace batch a few).
var tcpTimeouts = timeouts{readHeader: 5 * time.Second, write: time.Minute, idle: 90 * time.Second}

// unixTimeouts are the local socket's: no write bound (the plugin's policy
// wait is as long as its conflist says).
var unixTimeouts = timeouts{readHeader: 5 * time.Second, idle: 90 * time.Second}

func newServer(h http.Handler, t timeouts) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: t.readHeader, WriteTimeout: t.write, IdleTimeout: t.idle}
}

func serve(ctx context.Context, ln net.Listener, addr string, h http.Handler, t timeouts, log *slog.Logger) error {
	srv := newServer(h, t)
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	log.Info("serving", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve %s: %w", addr, err)
	}
	return nil
}

// Metrics are weftd's Prometheus metrics, on a registry of their own.
type Metrics struct {
	Registry       *prometheus.Registry
	ConvergeTime   prometheus.Histogram
	Peers          prometheus.Gauge
	ConfigErrors   prometheus.Counter
	SyncErrors     prometheus.Counter
	Ready          prometheus.Gauge
	BackendChanges prometheus.Counter
}

// NewMetrics creates and registers the metrics.
func NewMetrics() *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		ConvergeTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "weft_backend_converge_seconds", Help: "Time one backend convergence (read kernel, diff, write) took.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		Peers:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_peers", Help: "Remote nodes the backend can reach."}),
		ConfigErrors:   prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_config_errors_total", Help: "Invalid net-conf.json versions seen."}),
		SyncErrors:     prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_sync_errors_total", Help: "Failed agent syncs."}),
		Ready:          prometheus.NewGauge(prometheus.GaugeOpts{Name: "weft_ready", Help: "1 when the node can carry pod traffic."}),
		BackendChanges: prometheus.NewCounter(prometheus.CounterOpts{Name: "weft_backend_changes_total", Help: "Kernel objects the backend added, replaced or removed."}),
	}
	m.Registry.MustRegister(m.ConvergeTime, m.Peers, m.ConfigErrors, m.SyncErrors, m.Ready, m.BackendChanges,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}
