package nodeemu

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strconv"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// prober runs a container's readiness or liveness probe the way kubelet
// does (initial delay, period, timeout, success/failure thresholds) for the
// processes of hostNetwork pods. Startup probes are not run.
type prober struct {
	probe  *v1.Probe
	c      *v1.Container
	host   string // pod IP (the node IP for hostNetwork pods)
	client *http.Client
}

func newProber(c *v1.Container, p *v1.Probe, host string) *prober {
	if p == nil {
		return nil
	}
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	return &prober{probe: p, c: c, host: host, client: &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, // as kubelet does for HTTPS probes
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

// run probes until ctx ends, calling set(ok) on every transition from
// the initial state (readiness starts failed, liveness starts alive).
func (pr *prober) run(ctx context.Context, initial bool, set func(ok bool)) {
	p := pr.probe
	period := time.Duration(max(p.PeriodSeconds, 1)) * time.Second
	succT, failT := max(p.SuccessThreshold, 1), max(p.FailureThreshold, 1)
	if p.InitialDelaySeconds > 0 && !sleepCtx(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return
	}
	ready := initial
	var succ, fail int32
	for {
		if err := pr.once(ctx); err == nil {
			succ, fail = succ+1, 0
			if !ready && succ >= succT {
				ready = true
				set(true)
			}
		} else {
			succ, fail = 0, fail+1
			if ready && fail >= failT {
				ready = false
				set(false)
			}
		}
		if !sleepCtx(ctx, period) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// once performs one probe.
func (pr *prober) once(ctx context.Context) error {
	p := pr.probe
	timeout := time.Duration(max(p.TimeoutSeconds, 1)) * time.Second
	switch {
	case p.HTTPGet != nil:
		g := p.HTTPGet
		port, err := pr.port(g.Port)
		if err != nil {
			return err
		}
		host := g.Host
		if host == "" {
			host = pr.host
		}
		scheme := "http"
		if g.Scheme == v1.URISchemeHTTPS {
			scheme = "https"
		}
		u := url.URL{Scheme: scheme, Host: net.JoinHostPort(host, strconv.Itoa(port)), Path: g.Path}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
		if err != nil {
			return err
		}
		for _, h := range g.HTTPHeaders {
			req.Header.Add(h.Name, h.Value)
		}
		resp, err := pr.client.Do(req)
		if err != nil {
			return err
		}
		_ = resp.Body.Close()
		if resp.StatusCode < 200 || resp.StatusCode >= 400 {
			return fmt.Errorf("HTTP probe failed with statuscode: %d", resp.StatusCode)
		}
		return nil
	case p.TCPSocket != nil:
		port, err := pr.port(p.TCPSocket.Port)
		if err != nil {
			return err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = pr.host
		}
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(host, strconv.Itoa(port)), timeout)
		if err != nil {
			return err
		}
		return conn.Close()
	case p.Exec != nil && len(p.Exec.Command) > 0:
		cctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		return exec.CommandContext(cctx, p.Exec.Command[0], p.Exec.Command[1:]...).Run()
	}
	return nil // gRPC probes: not emulated, count as success
}

// port resolves a probe port, numeric or named after a container port.
func (pr *prober) port(p intstr.IntOrString) (int, error) {
	if p.Type == intstr.Int {
		return p.IntValue(), nil
	}
	for _, cp := range pr.c.Ports {
		if cp.Name == p.StrVal {
			return int(cp.ContainerPort), nil
		}
	}
	if n, err := strconv.Atoi(p.StrVal); err == nil {
		return n, nil
	}
	return 0, fmt.Errorf("probe port %q not found among the container's ports", p.StrVal)
}
