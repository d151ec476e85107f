package endpoint

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// ProgrammedPath mirrors policy.ProgrammedPath (weftd's handler); kept here
// so the plugin does not import the policy engine.
const ProgrammedPath = "/v1/policy/programmed/"

// WaitProgrammed asks weftd, over its unix socket, to answer once the
// policy rules for hostVeth are in the kernel ("isolation before start":
// the plugin's ADD calls this after Write and before it returns). It waits
// at most timeout.
func WaitProgrammed(ctx context.Context, socket, hostVeth string, timeout time.Duration) error {
	if err := validName(hostVeth); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout+time.Second)
	defer cancel()
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	u := "http://weftd" + ProgrammedPath + url.PathEscape(hostVeth) + "?timeout=" + url.QueryEscape(timeout.String())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("endpoint %s: %w", hostVeth, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("endpoint %s: ask weftd: %w", hostVeth, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("endpoint %s: policy not programmed: %s: %s", hostVeth, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}
