package api

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/testutil"
)

// history records every readiness change of one condition.
type history struct {
	mu      sync.Mutex
	reasons []string
}

func (h *history) Set(cond, reason string) {
	if cond != CondSocket {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reasons = append(h.reasons, reason)
}

func (h *history) snapshot() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]string(nil), h.reasons...)
}

// The socket is not ready until it answers; when its file is removed it
// reports the socket as not answering and listens again, after which the
// plugin's question is answered and the condition is met again.
func TestLocalSocketRecovers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "weftd.sock")
	routes := NewRoutes()
	if err := routes.Handle(endpoint.StatusPath, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })); err != nil {
		t.Fatal(err)
	}
	h := &history{}
	s := &LocalSocket{Path: path, Routes: routes, Health: h, Period: 50 * time.Millisecond, Log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	met := func() bool { r := h.snapshot(); return len(r) > 0 && r[len(r)-1] == "" }
	testutil.Eventually(t, "socket condition met", met)
	if r := h.snapshot(); !strings.Contains(r[0], "not yet listening") {
		t.Fatalf("first reason %q", r[0])
	}
	if err := endpoint.Status(ctx, path, time.Second); err != nil {
		t.Fatal(err)
	}

	n := len(h.snapshot())
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	testutil.Eventually(t, "not-answering reported", func() bool {
		for _, r := range h.snapshot()[n:] {
			if strings.Contains(r, "does not answer") && strings.Contains(r, path) {
				return true
			}
		}
		return false
	})
	testutil.Eventually(t, "socket condition met again", met)
	if err := endpoint.Status(ctx, path, time.Second); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}

// A socket that cannot be served returns the error at once, with the
// condition naming it (weftd then exits: TestSocketFailureStopsWeftd).
func TestLocalSocketCannotListen(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(file, "weftd.sock") // parent is a regular file
	h := &history{}
	s := &LocalSocket{Path: path, Routes: NewRoutes(), Health: h, Period: time.Second, Log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), path) {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("run did not return")
	}
	if r := h.snapshot(); r[len(r)-1] == "" || !strings.Contains(r[len(r)-1], "socket") {
		t.Fatalf("reasons %q", r)
	}
}

// The route table answers each registered path with its own handler (a
// path ending in "/" for everything under it), 404 elsewhere, and refuses
// a second handler for one path and paths outside /v1/; the plugin's
// clients reach the routes over the unix socket.
func TestRoutes(t *testing.T) {
	routes := NewRoutes()
	text := func(s string) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte(s + " " + r.URL.Path)) })
	}
	if err := routes.Handle(endpoint.ProgrammedPath, text("wait")); err != nil {
		t.Fatal(err)
	}
	if err := routes.Handle(endpoint.StatusPath, text("status")); err != nil {
		t.Fatal(err)
	}
	if err := routes.Handle(endpoint.StatusPath, text("again")); err == nil {
		t.Error("a second handler for one path was accepted")
	}
	if err := routes.Handle("/healthz", text("x")); err == nil {
		t.Error("a path outside /v1/ was accepted")
	}
	if got := routes.Paths(); strings.Join(got, ",") != endpoint.ProgrammedPath+","+endpoint.StatusPath {
		t.Errorf("paths %q", got)
	}
	path := filepath.Join(t.TempDir(), "weftd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeUnix(ctx, path, routes, slog.New(slog.DiscardHandler)) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	testutil.Eventually(t, "socket answers", func() bool { return endpoint.Status(ctx, path, time.Second) == nil })
	if err := endpoint.WaitProgrammed(ctx, path, "wvabc", time.Second); err != nil {
		t.Fatalf("the plugin's wait through the table: %v", err)
	}
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}}
	defer client.CloseIdleConnections()
	for p, want := range map[string]string{
		endpoint.ProgrammedPath + "wvabc": "200 wait " + endpoint.ProgrammedPath + "wvabc",
		endpoint.StatusPath:               "200 status " + endpoint.StatusPath,
		"/v1/weftctl/peers":               "404",
	} {
		resp, err := client.Get("http://weftd" + p)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if got := strconv.Itoa(resp.StatusCode) + " " + string(body); !strings.HasPrefix(got, want) {
			t.Errorf("GET %s: %q, want %q", p, got, want)
		}
	}
}
