package endpoint

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/weftnet/weft/internal/endpoint/record"
)

// The shaping paths of weftd's local socket (served by shaping.Handler).
const (
	// ShapingAppliedPath + <hostVeth>: answers once the attachment's
	// bandwidth (from its record) is in the kernel; 422 when the request
	// is invalid (the body names the annotation).
	ShapingAppliedPath = "/v1/shaping/applied/"
	// ShapingReleasedPath + <hostVeth>: the attachment is gone (DEL).
	ShapingReleasedPath = "/v1/shaping/released/"
)

// RejectedError is weftd's answer that a request can never be applied.
type RejectedError struct{ Reason string }

func (e *RejectedError) Error() string { return e.Reason }

// WaitShaped asks weftd to shape the attachment of hostVeth as its record
// says and answers once it is done (at most timeout).
func WaitShaped(ctx context.Context, socket, hostVeth string, timeout time.Duration) error {
	return shapingCall(ctx, socket, ShapingAppliedPath, hostVeth, timeout)
}

// ReleaseShaping tells weftd that the attachment of hostVeth is gone.
func ReleaseShaping(ctx context.Context, socket, hostVeth string, timeout time.Duration) error {
	return shapingCall(ctx, socket, ShapingReleasedPath, hostVeth, timeout)
}

func shapingCall(ctx context.Context, socket, path, hostVeth string, timeout time.Duration) error {
	if err := record.ValidName(hostVeth); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	a, err := call(ctx, socket, http.MethodPost, path+url.PathEscape(hostVeth), nil)
	if err != nil {
		return fmt.Errorf("bandwidth of %s: ask weftd: %w", hostVeth, err)
	}
	switch a.Code {
	case http.StatusOK:
		return nil
	case http.StatusUnprocessableEntity:
		return &RejectedError{Reason: a.Body}
	}
	return fmt.Errorf("bandwidth of %s: %s: %s", hostVeth, a.Status, a.Body)
}
