package cluster

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"time"
)

// controlPlaneUsers are the static-token users of the cluster. Nodes are
// system:node:<name> in system:nodes, so the Node authorizer and
// NodeRestriction apply to the emulators exactly as to kubelets.
func controlPlaneUsers(nodes int) []tokenUser {
	users := []tokenUser{
		{Name: adminUser, Groups: []string{"system:masters"}},
		{Name: cmUser},
		{Name: schedUser},
	}
	for i := 1; i <= nodes; i++ {
		users = append(users, tokenUser{Name: "system:node:" + NodeName(i), Groups: []string{"system:nodes"}})
	}
	return users
}

// writeCredentials creates PKI, tokens and every kubeconfig.
func (c *Cluster) writeCredentials(nodes int) error {
	p := c.pki()
	ips := []net.IP{net.ParseIP(ControlIP), net.ParseIP("127.0.0.1"), net.ParseIP(ServiceAPIIP)}
	if err := p.ensure(ips); err != nil {
		return err
	}
	ca, err := p.CA()
	if err != nil {
		return fmt.Errorf("read CA: %w", err)
	}
	toks, err := p.tokens(controlPlaneUsers(nodes))
	if err != nil {
		return err
	}
	local := "https://127.0.0.1:" + APIPort
	if err := writeKubeconfig(c.Kubeconfig(), APIServerURL(), ca, adminUser, toks[adminUser]); err != nil {
		return err
	}
	if err := writeKubeconfig(p.path("controller-manager.kubeconfig"), local, ca, cmUser, toks[cmUser]); err != nil {
		return err
	}
	if err := writeKubeconfig(p.path("scheduler.kubeconfig"), local, ca, schedUser, toks[schedUser]); err != nil {
		return err
	}
	for i := 1; i <= nodes; i++ {
		u := "system:node:" + NodeName(i)
		if err := writeKubeconfig(filepath.Join(c.nodeDir(NodeName(i)), "kubeconfig"), APIServerURL(), ca, u, toks[u]); err != nil {
			return err
		}
	}
	return nil
}

// startControlPlane starts etcd, kube-apiserver, kube-controller-manager
// and kube-scheduler in the control-plane namespace and waits for /readyz.
func (c *Cluster) startControlPlane(ctx context.Context) error {
	p := c.pki()
	procs := []procSpec{{
		Name: "weft-etcd",
		Argv: []string{c.bin("weft-etcd"), "--data-dir", c.path("etcd"),
			"--listen", "http://127.0.0.1:2379", "--peer", "http://127.0.0.1:2380"},
	}, {
		Name: "kube-apiserver",
		Argv: []string{c.bin("kube-apiserver"),
			"--etcd-servers=http://127.0.0.1:2379",
			"--advertise-address=" + ControlIP,
			"--bind-address=0.0.0.0",
			"--secure-port=" + APIPort,
			"--tls-cert-file=" + p.path("apiserver.crt"),
			"--tls-private-key-file=" + p.path("apiserver.key"),
			"--client-ca-file=" + p.path("ca.crt"),
			"--cert-dir=" + c.path("apiserver-certs"),
			"--token-auth-file=" + p.path("tokens.csv"),
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--allow-privileged=true",
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p.path("sa.pub"),
			"--service-account-signing-key-file=" + p.path("sa.key"),
			"--api-audiences=https://kubernetes.default.svc.cluster.local",
			"--profiling=false",
			"--v=1",
		},
	}}
	for _, pr := range procs {
		pr.Netns = ControlNS
		if err := c.start(pr); err != nil {
			return err
		}
	}
	if err := c.waitReadyz(ctx, 3*time.Minute); err != nil {
		return err
	}
	rest := []procSpec{{
		Name: "kube-controller-manager",
		Argv: []string{c.bin("kube-controller-manager"),
			"--kubeconfig=" + p.path("controller-manager.kubeconfig"),
			"--authentication-kubeconfig=" + p.path("controller-manager.kubeconfig"),
			"--authorization-kubeconfig=" + p.path("controller-manager.kubeconfig"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--controllers=*",
			"--allocate-node-cidrs=true",
			"--cluster-cidr=" + ClusterCIDR,
			"--node-cidr-mask-size=24",
			"--service-cluster-ip-range=" + ServiceCIDR,
			"--service-account-private-key-file=" + p.path("sa.key"),
			"--root-ca-file=" + p.path("ca.crt"),
			"--use-service-account-credentials=true",
			"--cluster-signing-cert-file=" + p.path("ca.crt"),
			"--cluster-signing-key-file=" + p.path("ca.key"),
			"--v=1",
		},
	}, {
		Name: "kube-scheduler",
		Argv: []string{c.bin("kube-scheduler"),
			"--kubeconfig=" + p.path("scheduler.kubeconfig"),
			"--authentication-kubeconfig=" + p.path("scheduler.kubeconfig"),
			"--authorization-kubeconfig=" + p.path("scheduler.kubeconfig"),
			"--bind-address=127.0.0.1",
			"--leader-elect=false",
			"--v=1",
		},
	}}
	for _, pr := range rest {
		pr.Netns = ControlNS
		if err := c.start(pr); err != nil {
			return err
		}
	}
	return nil
}

// apiGet does an authenticated GET against the apiserver from the host.
func (c *Cluster) apiGet(ctx context.Context, path string) (int, string, error) {
	ca, err := c.pki().CA()
	if err != nil {
		return 0, "", fmt.Errorf("read CA: %w", err)
	}
	toks, err := c.pki().tokens(nil)
	if err != nil {
		return 0, "", err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, Proxy: nil},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, APIServerURL()+path, nil)
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Authorization", "Bearer "+toks[adminUser])
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(body), nil
}

// waitReadyz waits until the apiserver answers /readyz with 200.
func (c *Cluster) waitReadyz(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		if _, ok := c.running("kube-apiserver"); !ok {
			return fmt.Errorf("kube-apiserver exited (see %s)", filepath.Join(c.logDir(), "kube-apiserver.log"))
		}
		code, body, err := c.apiGet(ctx, "/readyz")
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = fmt.Sprintf("%d %s", code, strings.TrimSpace(body))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after %s: %s", timeout, last)
}
