package endpoint

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/weftnet/weft/internal/endpoint/record"
)

// The paths of weftd's local socket this package is the client of. weftd
// serves them from its route table (daemon/api.Routes), where the policy
// engine registers its handlers at these same constants
// (policy.RegisterLocalAPI); the plugin imports neither.
const (
	// ProgrammedPath + <hostVeth>: answers once the endpoint's policy
	// rules are in the kernel (WaitProgrammed).
	ProgrammedPath = "/v1/policy/programmed/"
	// StatusPath: whether weftd can program new pods (Status).
	StatusPath = "/v1/status"
)

// WaitProgrammed asks weftd, over its unix socket, to answer once the
// policy rules for hostVeth are in the kernel ("isolation before start":
// the plugin's ADD calls this after Write and before it returns). It waits
// at most timeout.
func WaitProgrammed(ctx context.Context, socket, hostVeth string, timeout time.Duration) error {
	if err := record.ValidName(hostVeth); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	defer cancel()
	a, err := call(ctx, socket, http.MethodGet, ProgrammedPath+url.PathEscape(hostVeth)+"?timeout="+url.QueryEscape(timeout.String()), nil)
	if err != nil {
		return fmt.Errorf("endpoint %s: ask weftd: %w", hostVeth, err)
	}
	if a.Code != http.StatusOK {
		return fmt.Errorf("endpoint %s: policy not programmed: %s: %s", hostVeth, a.Status, a.Body)
	}
	return nil
}

// NotReadyError is weftd's answer that it cannot program new pods now.
type NotReadyError struct{ Reason string }

func (e *NotReadyError) Error() string { return "weftd not ready: " + e.Reason }

// Status asks weftd, over its unix socket, whether it can program new pods
// (the plugin's CNI STATUS). It returns nil if so, a *NotReadyError with
// weftd's reason if weftd answered no, and another error if the socket did
// not answer within timeout (no weftd, or a stuck one).
func Status(ctx context.Context, socket string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	a, err := call(ctx, socket, http.MethodGet, StatusPath, nil)
	if err != nil {
		return fmt.Errorf("weftd socket %s does not answer: %w", socket, err)
	}
	if a.Code != http.StatusOK {
		return &NotReadyError{Reason: a.Status + ": " + a.Body}
	}
	return nil
}
