package api

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/weftnet/weft/internal/endpoint"
)

// DefaultSocket is weftd's local API socket, the one the CNI plugin asks.
const DefaultSocket = "/run/weft/weftd.sock"

// Routes is the route table of the local socket: one handler per path (a
// path ending in "/" takes every path under it, as in http.ServeMux). Each
// room of weftd registers its own routes (the policy engine the plugin's
// "programmed" wait and CNI STATUS; weftctl's next); the clients of these
// paths live in internal/endpoint. Paths not in the table answer 404.
type Routes struct {
	mu    sync.Mutex
	mux   *http.ServeMux
	paths []string
}

// NewRoutes returns an empty table.
func NewRoutes() *Routes { return &Routes{mux: http.NewServeMux()} }

// Handle routes path to h. A path may be registered once; it must start
// with "/v1/" so that routes can change their form under a new version.
func (r *Routes) Handle(path string, h http.Handler) error {
	if !strings.HasPrefix(path, "/v1/") || h == nil {
		return fmt.Errorf("local API route %q: want a /v1/ path and a handler", path)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if slices.Contains(r.paths, path) {
		return fmt.Errorf("local API route %q registered twice", path)
	}
	r.mux.Handle(path, h)
	r.paths = append(r.paths, path)
	return nil
}

// Paths lists the registered paths, sorted.
func (r *Routes) Paths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Sorted(slices.Values(r.paths))
}

// ServeHTTP dispatches to the route of the request's path.
func (r *Routes) ServeHTTP(w http.ResponseWriter, req *http.Request) { r.mux.ServeHTTP(w, req) }

// Conditions is where the socket reports CondSocket (Status implements it).
type Conditions interface {
	Set(cond, reason string)
}

// LocalSocket serves a route table on a unix socket and keeps it
// answering: every Period it asks its own socket (the STATUS route), and
// when the path does not answer (someone removed or replaced the file, e.g.
// a cleanup of /run/weft) it reports CondSocket not met and listens again,
// which recreates the file.
type LocalSocket struct {
	Path   string
	Routes *Routes
	Health Conditions
	Period time.Duration // between probes once the socket answered
	Log    *slog.Logger
}

// Run serves until ctx ends. It returns an error only when it cannot
// listen at all: then no pod's ADD can confirm its rules, and weftd must
// exit rather than stay up looking healthy.
func (s *LocalSocket) Run(ctx context.Context) error {
	s.Health.Set(CondSocket, "not yet listening on "+s.Path)
	for {
		sctx, cancel := context.WithCancel(ctx)
		served := make(chan error, 1)
		go func() { served <- ServeUnix(sctx, s.Path, s.Routes, s.Log) }()
		again, err := s.watch(sctx, served)
		cancel()
		if !again {
			if err != nil {
				s.Health.Set(CondSocket, err.Error())
			}
			return err
		}
		<-served // the old listener is closed before the path is reused
	}
}

// watch probes the socket until ctx ends (false, nil), the server fails
// (false, err) or the path stops answering (true, nil).
func (s *LocalSocket) watch(ctx context.Context, served <-chan error) (bool, error) {
	answered := false
	wait := 20 * time.Millisecond // until the first answer: the listener is being created
	for tries := 0; ; tries++ {
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			<-served
			return false, nil
		case err := <-served:
			t.Stop()
			if ctx.Err() != nil {
				return false, nil
			}
			if err == nil {
				err = errors.New("server stopped")
			}
			return false, fmt.Errorf("local API socket %s: %w", s.Path, err)
		case <-t.C:
		}
		err := endpoint.Status(ctx, s.Path, time.Second)
		var nr *endpoint.NotReadyError
		if err == nil || errors.As(err, &nr) { // it answers; what it says is the routes' business
			if !answered {
				s.Health.Set(CondSocket, "")
				answered, wait = true, s.Period
			}
			continue
		}
		if ctx.Err() != nil {
			continue
		}
		if answered || tries > 50 {
			s.Log.Error("local API socket does not answer; listening again", "socket", s.Path, "err", err)
			s.Health.Set(CondSocket, fmt.Sprintf("%s does not answer, listening again: %v", s.Path, err))
			return true, nil
		}
	}
}
