package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/policy"
)

// localSocket serves weftd's local API (the plugin's "programmed" wait and
// STATUS question) and keeps it answering: every period it asks its own
// socket, and when the path does not answer (someone removed or replaced
// the file, e.g. a cleanup of /run/weft) it reports api.CondSocket not met
// and listens again, which recreates the file.
type localSocket struct {
	path    string
	handler http.Handler
	health  policy.Health
	period  time.Duration
	log     *slog.Logger
}

// run serves until ctx ends. It returns an error only when it cannot
// listen at all: then no pod's ADD can confirm its rules, and weftd must
// exit rather than stay up looking healthy.
func (s *localSocket) run(ctx context.Context) error {
	s.health.Set(api.CondSocket, "not yet listening on "+s.path)
	for {
		sctx, cancel := context.WithCancel(ctx)
		served := make(chan error, 1)
		go func() { served <- api.ServeUnix(sctx, s.path, s.handler, s.log) }()
		again, err := s.watch(sctx, served)
		cancel()
		if !again {
			if err != nil {
				s.health.Set(api.CondSocket, err.Error())
			}
			return err
		}
		<-served // the old listener is closed before the path is reused
	}
}

// watch probes the socket until ctx ends (false, nil), the server fails
// (false, err) or the path stops answering (true, nil).
func (s *localSocket) watch(ctx context.Context, served <-chan error) (bool, error) {
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
			return false, fmt.Errorf("local API socket %s: %w", s.path, err)
		case <-t.C:
		}
		err := endpoint.Status(ctx, s.path, time.Second)
		var nr *endpoint.NotReadyError
		if err == nil || errors.As(err, &nr) { // it answers; what it says is policy.CondSync's business
			if !answered {
				s.health.Set(api.CondSocket, "")
				answered, wait = true, s.period
			}
			continue
		}
		if ctx.Err() != nil {
			continue
		}
		if answered || tries > 50 {
			s.log.Error("local API socket does not answer; listening again", "socket", s.path, "err", err)
			s.health.Set(api.CondSocket, fmt.Sprintf("%s does not answer, listening again: %v", s.path, err))
			return true, nil
		}
	}
}
