package policy

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/weftnet/weft/internal/endpoint"
)

// Router is the local socket's route table (daemon/api.Routes).
type Router interface {
	Handle(path string, h http.Handler) error
}

// RegisterLocalAPI puts the controller's routes on the local socket, at
// the paths whose client is internal/endpoint:
//   - endpoint.ProgrammedPath + <hostVeth>?timeout=5s answers 200 once the
//     endpoint's rules are in the kernel, 504 if the timeout (default 5 s,
//     at most 60 s) passes first (ProgrammedHandler);
//   - endpoint.StatusPath answers 200 when the controller can program new
//     pods (it has synced and syncs are not failing), 503 with the reason
//     otherwise; the plugin's CNI STATUS asks it (StatusHandler).
func RegisterLocalAPI(r Router, c *Controller) error {
	if err := r.Handle(endpoint.ProgrammedPath, ProgrammedHandler(c)); err != nil {
		return err
	}
	return r.Handle(endpoint.StatusPath, StatusHandler(c))
}

// StatusHandler serves the policy engine's readiness on the local socket.
func StatusHandler(c *Controller) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		if ok, reason := c.Healthy(); !ok {
			http.Error(w, "policy engine not ready: "+reason, http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
}

// ProgrammedHandler serves the "isolation before start" wait for the CNI
// plugin (endpoint.WaitProgrammed is its client).
func ProgrammedHandler(c *Controller) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		veth := strings.TrimPrefix(r.URL.Path, endpoint.ProgrammedPath)
		if veth == "" || strings.Contains(veth, "/") || r.Method != http.MethodGet {
			http.Error(w, "GET "+endpoint.ProgrammedPath+"<hostVeth>", http.StatusBadRequest)
			return
		}
		timeout := 5 * time.Second
		if s := r.URL.Query().Get("timeout"); s != "" {
			d, err := time.ParseDuration(s)
			if err != nil || d <= 0 {
				http.Error(w, "bad timeout", http.StatusBadRequest)
				return
			}
			timeout = min(d, time.Minute)
		}
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		if err := c.WaitProgrammed(ctx, veth); err != nil {
			http.Error(w, err.Error(), http.StatusGatewayTimeout)
			return
		}
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("programmed\n"))
	})
}
