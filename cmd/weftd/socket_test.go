package main

import (
	"context"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/internal/endpoint"
)

// history records every readiness change of one condition.
type history struct {
	mu      sync.Mutex
	reasons []string
}

func (h *history) Set(cond, reason string) {
	if cond != api.CondSocket {
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

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("never happened: %s", what)
		}
	}
}

// The socket is not ready until it answers; when its file is removed it
// reports the socket as not answering and listens again, after which the
// plugin's question is answered and the condition is met again.
func TestLocalSocketRecovers(t *testing.T) {
	path := filepath.Join(t.TempDir(), "weftd.sock")
	mux := http.NewServeMux()
	mux.HandleFunc(endpoint.StatusPath, func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	h := &history{}
	s := &localSocket{path: path, handler: mux, health: h, period: 50 * time.Millisecond, log: slog.New(slog.DiscardHandler)}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	met := func() bool { r := h.snapshot(); return len(r) > 0 && r[len(r)-1] == "" }
	waitFor(t, "socket condition met", met)
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
	waitFor(t, "not-answering reported", func() bool {
		for _, r := range h.snapshot()[n:] {
			if strings.Contains(r, "does not answer") && strings.Contains(r, path) {
				return true
			}
		}
		return false
	})
	waitFor(t, "socket condition met again", met)
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
	s := &localSocket{path: path, handler: http.NewServeMux(), health: h, period: time.Second, log: slog.New(slog.DiscardHandler)}
	done := make(chan error, 1)
	go func() { done <- s.run(context.Background()) }()
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
