package api

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestEndpoints(t *testing.T) {
	s := NewStatus()
	m := NewMetrics()
	h := Handler(s, m.Registry, time.Minute)
	code, body := get(t, h, "/readyz")
	if code != 503 || !strings.Contains(body, "lease: not yet synced") || !strings.Contains(body, "conflist: not yet synced") {
		t.Fatalf("initial readyz %d %q", code, body)
	}
	for _, c := range []string{CondConfig, CondLease, CondBackend} {
		s.Set(c, "")
	}
	s.Set(CondConflist, "waiting for backend")
	s.Detail("other-cni-configs", "05-other.conf (shadows weft)")
	code, body = get(t, h, "/readyz")
	if code != 503 || strings.Contains(body, "lease") || !strings.Contains(body, "conflist: waiting for backend") || !strings.Contains(body, "info: other-cni-configs: 05-other.conf") {
		t.Fatalf("readyz %d %q", code, body)
	}
	s.Set(CondConflist, "")
	if code, body = get(t, h, "/readyz"); code != 200 || !strings.HasPrefix(body, "ok") {
		t.Fatalf("ready readyz %d %q", code, body)
	}
	if code, _ = get(t, h, "/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, _ = get(t, Handler(s, m.Registry, -time.Second), "/healthz"); code != 503 {
		t.Fatalf("stalled healthz %d", code)
	}
	m.ConfigErrors.Inc()
	m.Peers.Set(2)
	m.ConvergeTime.Observe(0.01)
	code, body = get(t, h, "/metrics")
	for _, want := range []string{"weft_config_errors_total 1", "weft_peers 2", "weft_backend_converge_seconds_count 1"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Fatalf("metrics lack %q", want)
		}
	}
}

// The health and operational servers close idle keep-alive connections
// after 90 s and bound a response at 60 s (a probe takes up to 10 s, a
// trace batch a few); the local socket has no write bound (the plugin's
// policy wait is configurable) but closes idle connections too. With short
// bounds: an idle connection is closed by the server, and a handler slower
// than the write bound gets no answer through.
func TestServerTimeouts(t *testing.T) {
	for name, c := range map[string]struct {
		got         timeouts
		write, idle time.Duration
	}{"tcp": {tcpTimeouts, time.Minute, 90 * time.Second}, "unix": {unixTimeouts, 0, 90 * time.Second}} {
		srv := newServer(http.NotFoundHandler(), c.got)
		if srv.WriteTimeout != c.write || srv.IdleTimeout != c.idle || srv.ReadHeaderTimeout == 0 {
			t.Errorf("%s server: write %v idle %v read-header %v, want write %v idle %v", name, srv.WriteTimeout, srv.IdleTimeout, srv.ReadHeaderTimeout, c.write, c.idle)
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, ln, "test", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				time.Sleep(600 * time.Millisecond)
			}
			_, _ = w.Write([]byte("ok"))
		}), timeouts{readHeader: time.Second, write: 300 * time.Millisecond, idle: 200 * time.Millisecond}, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	ask := func(path string) (*http.Response, error) {
		if _, err := conn.Write([]byte("GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n")); err != nil {
			return nil, err
		}
		return http.ReadResponse(br, nil)
	}
	resp, err := ask("/")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("first request: %v %v", resp, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = conn.SetReadDeadline(time.Now().Add(2 * time.Second))
	start := time.Now()
	if _, err := br.ReadByte(); err != io.EOF || time.Since(start) > 1500*time.Millisecond {
		t.Errorf("idle keep-alive connection: %v after %v, want EOF from the server's idle bound", err, time.Since(start))
	}
	conn2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn2.Close()
	conn, br = conn2, bufio.NewReader(conn2)
	_ = conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	if resp, err := ask("/slow"); err == nil {
		b, _ := io.ReadAll(resp.Body)
		t.Errorf("a handler slower than the write bound answered %d %q", resp.StatusCode, b)
	}
}
