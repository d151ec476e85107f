package endpoint

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestWaitProgrammed(t *testing.T) {
	sock, ln := listenUnix(t)
	var gotTimeout string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotTimeout = r.URL.Query().Get("timeout")
		if strings.TrimPrefix(r.URL.Path, ProgrammedPath) == "wvready" {
			w.WriteHeader(http.StatusOK)
			return
		}
		http.Error(w, "not programmed", http.StatusGatewayTimeout)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	ctx := context.Background()
	if err := WaitProgrammed(ctx, sock, "wvready", 2*time.Second); err != nil {
		t.Fatal(err)
	}
	if gotTimeout != "2s" {
		t.Errorf("timeout sent = %q", gotTimeout)
	}
	if err := WaitProgrammed(ctx, sock, "wvother", time.Second); err == nil || !strings.Contains(err.Error(), "not programmed") {
		t.Errorf("unprogrammed endpoint: %v", err)
	}
	if err := WaitProgrammed(ctx, filepath.Join(t.TempDir(), "none.sock"), "wvready", time.Second); err == nil {
		t.Error("no weftd: no error")
	}
	if err := WaitProgrammed(ctx, sock, "../x", time.Second); err == nil {
		t.Error("bad name accepted")
	}
}
