package api

import (
	"io"
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
