package endpoint

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func listenUnix(t *testing.T) (string, net.Listener) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "weftd.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return sock, ln
}

// TestCall: the request net/http's server reads (method, path with its
// query, body), the answer's code, status text and trimmed body.
func TestCall(t *testing.T) {
	sock, ln := listenUnix(t)
	var got string
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got = r.Method + " " + r.URL.RequestURI() + " " + r.Header.Get("Content-Type") + " " + string(b)
		http.Error(w, "  no such pod\n", http.StatusUnprocessableEntity)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	a, err := call(context.Background(), sock, http.MethodPost, "/v1/x/wv%2Fa?timeout=2s", []byte(`{"op":"ADD"}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := `POST /v1/x/wv%2Fa?timeout=2s application/json {"op":"ADD"}`; got != want {
		t.Errorf("server read %q, want %q", got, want)
	}
	if a.Code != 422 || a.Status != "422 Unprocessable Entity" || a.Body != "no such pod" {
		t.Errorf("answer %+v", a)
	}
}

// TestCallStreamingBody: a reply whose body never ends costs the call its
// first 4 KiB, not its deadline.
func TestCallStreamingBody(t *testing.T) {
	sock, ln := listenUnix(t)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		chunk := []byte(strings.Repeat("x", 8192))
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	start := time.Now()
	a, err := call(ctx, sock, http.MethodGet, "/v1/status", nil)
	if err != nil || a.Code != http.StatusOK || len(a.Body) != 4096 {
		t.Errorf("streaming reply: %d, %d bytes of body, %v", a.Code, len(a.Body), err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("streaming reply held the call %v", d)
	}
}

// TestCallEnds: a weftd that accepts and never answers costs the call
// its deadline and no more, and cancelling the context ends it at once;
// a reply that is not HTTP is an error, not a status.
func TestCallEnds(t *testing.T) {
	sock, ln := listenUnix(t)
	garbage := make(chan bool, 4)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			if <-garbage {
				c.Write([]byte("\x00\x01 not http\r\n\r\n"))
				c.Close()
				continue
			}
			defer c.Close() // silent until the test ends
		}
	}()

	garbage <- false
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := call(ctx, sock, http.MethodGet, "/v1/status", nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent weftd: err %v, want the deadline", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("silent weftd: the call took %v past a 150 ms deadline", d)
	}

	garbage <- false
	ctx, cancel = context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { _, err := call(ctx, sock, http.MethodGet, "/v1/status", nil); done <- err }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("cancelled call: err %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled call did not end")
	}

	garbage <- true
	if a, err := call(context.Background(), sock, http.MethodGet, "/v1/status", nil); err == nil {
		t.Errorf("garbage reply taken as %+v", a)
	}
}
