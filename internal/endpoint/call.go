package endpoint

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// answer is weftd's reply to one call: the status line's code and text
// ("422 Unprocessable Entity") and up to 4 KiB of the body, trimmed.
type answer struct {
	Code   int
	Status string
	Body   string
}

// call is one HTTP/1.1 exchange with weftd on its unix socket, dialled,
// written and read in the calling goroutine. The plugin makes one call per
// connection; net/http's client (a dial goroutine, read and write loops, a
// connection pool) only adds hand-offs between goroutines, which on a
// busy node cost the ADD that waits for the answer a few hundred
// microseconds. ctx bounds the whole exchange: its deadline becomes the
// connection's, and cancelling it ends the call at once.
func call(ctx context.Context, socket, method, path string, body []byte) (answer, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return answer{}, err
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	var req bytes.Buffer
	req.WriteString(method + " " + path + " HTTP/1.1\r\nHost: weftd\r\nConnection: close\r\n")
	if len(body) > 0 {
		req.WriteString("Content-Type: application/json\r\n")
	}
	req.WriteString("Content-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n")
	req.Write(body)
	if _, err := c.Write(req.Bytes()); err != nil {
		return answer{}, ctxErr(ctx, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		return answer{}, ctxErr(ctx, err)
	}
	// The status decides; the body is only a message, read up to 4 KiB
	// and never drained (closing the connection ends the rest), and a body
	// cut short still leaves what arrived.
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return answer{Code: resp.StatusCode, Status: resp.Status, Body: strings.TrimSpace(string(b))}, nil
}

// ctxErr names the context's end (deadline, cancellation) when that is
// what broke the connection. The connection's deadline comes only from
// ctx, so an I/O timeout means ctx is ending: its timer may fire a moment
// after the read woke, so wait for it.
func ctxErr(ctx context.Context, err error) error {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		<-ctx.Done()
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w (%v)", cerr, err)
	}
	return err
}
