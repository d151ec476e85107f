package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/weftnet/weft/internal/nodeapi"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/ipam/store"
	"github.com/weftnet/weft/ipam/store/disk"
)

// weftctl runs the CLI built from this checkout against the local cluster.
type weftctl struct {
	t          testing.TB
	bin        string
	kubeconfig string
}

func adminKubeconfig() string {
	return filepath.Join(testutil.RepoRoot(), ".localcluster", "kubeconfig")
}

// buildWeftctl builds cmd/weftctl into a temporary directory.
func buildWeftctl(t testing.TB, ctx context.Context) *weftctl {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "weftctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/weftctl")
	cmd.Dir = testutil.RepoRoot()
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build weftctl: %v\n%s", err, out)
	}
	return &weftctl{t: t, bin: bin, kubeconfig: adminKubeconfig()}
}

// run returns stdout, stderr and the exit code.
func (w *weftctl) run(ctx context.Context, args ...string) (string, string, int) {
	w.t.Helper()
	cmd := exec.CommandContext(ctx, w.bin, append([]string{"--kubeconfig", w.kubeconfig}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatalf("weftctl %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// json runs weftctl -o json and decodes its output into v; the exit code
// must be want.
func (w *weftctl) json(ctx context.Context, v any, want int, args ...string) {
	w.t.Helper()
	out, errs, code := w.run(ctx, append(args, "-o", "json")...)
	if code != want || out == "" {
		w.t.Fatalf("weftctl %v: exit %d, want %d: %s%s", args, code, want, errs, out)
	}
	if err := json.Unmarshal([]byte(out), v); err != nil {
		w.t.Fatalf("weftctl %v: not JSON: %v\n%s", args, err, out)
	}
}

// traceRow is weftctl's JSON of one trace (cmd/weftctl TraceRow).
type traceRow struct {
	From, To, Port, Reason, Error string
	Allowed                       bool
	Traces                        []struct {
		Node, Local, Verdict string
	}
}

// traceAgrees asks weftctl policy trace for every pair and spec of a truth
// case (one command; each node traces the flows it is an end of from the
// rules in its kernel) and compares each verdict with the table that the
// live probes just agreed with.
func (e *polEnv) traceAgrees(w *weftctl, name string, specs []probeSpec, expect func(probeJob) bool) {
	e.t.Helper()
	var refs, ports []string
	for _, n := range polNS {
		for _, p := range polPods {
			refs = append(refs, e.ns(n)+"/"+p)
		}
	}
	for _, s := range specs {
		ports = append(ports, fmt.Sprintf("%d/%s", s.port, s.proto))
	}
	var res struct{ Traces []traceRow }
	w.json(e.ctx, &res, 0, "policy", "trace", "--from", strings.Join(refs, ","), "--to", strings.Join(refs, ","), "--port", strings.Join(ports, ","))
	if want := len(refs) * len(refs) * len(specs); len(res.Traces) != want {
		e.t.Fatalf("%s: %d traces, want %d", name, len(res.Traces), want)
	}
	byRow := map[string]traceRow{}
	for _, r := range res.Traces {
		byRow[r.From+" "+r.To+" "+r.Port] = r
	}
	bad := 0
	for _, s := range specs {
		for _, p := range allPairs() {
			r, ok := byRow[e.ns(p[0].ns)+"/"+p[0].pod+" "+e.ns(p[1].ns)+"/"+p[1].pod+" "+fmt.Sprintf("%d/%s", s.port, s.proto)]
			want := expect(probeJob{p, s})
			if !ok || r.Allowed != want || r.Error != "" {
				if bad++; bad <= 10 {
					e.t.Errorf("%s: weftctl policy trace %s -> %s %s: allowed=%v (%s%s), the live probe says %v", name, p[0], p[1], s, r.Allowed, r.Reason, r.Error, want)
				}
			}
		}
	}
	if bad == 0 {
		e.t.Logf("%s: weftctl policy trace agrees with the live probe on all %d flows", name, len(res.Traces))
	}
}

// httpsInNode fetches https://ip:9413/path from inside the node's
// namespace with token (none when ""), not verifying weftd's self-signed
// certificate.
func httpsInNode(node, ip, path, token string) (int, string, error) {
	nsPath := filepath.Join("/run/netns", node)
	tr := &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var c net.Conn
			err := ns.WithNetNSPath(nsPath, func(ns.NetNS) error {
				var err error
				c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
				return err
			})
			return c, err
		}}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, fmt.Sprintf("https://%s:%d%s", ip, nodeapi.DefaultPort, path), nil)
	if err != nil {
		return 0, "", err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// adminRESTConfig is the admin kubeconfig's client configuration.
func adminRESTConfig(t testing.TB) *rest.Config {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", adminKubeconfig())
	if err != nil {
		t.Fatalf("admin kubeconfig: %v", err)
	}
	return cfg
}

// adminToken is the bearer token of the admin kubeconfig.
func adminToken(t testing.TB) string {
	t.Helper()
	tok := adminRESTConfig(t).BearerToken
	if tok == "" {
		t.Fatal("admin kubeconfig has no token")
	}
	return tok
}

// audienceToken is a 10-minute token of ServiceAccount ns/name bound to
// weftd's audience (what weftctl and a scraper show weftd), made by c.
func audienceToken(t testing.TB, ctx context.Context, c kubernetes.Interface, ns, name string) string {
	t.Helper()
	exp := int64(600)
	tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: []string{nodeapi.Audience}, ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token of %s/%s for %s: %v", ns, name, nodeapi.Audience, err)
	}
	return tr.Status.Token
}

// scrapeMetrics reads weftd's /metrics on its secure port with a weftd
// token of weftctl's reader ServiceAccount (weftd refuses the admin's own
// apiserver token).
func scrapeMetrics(t testing.TB, node, ip string) (string, error) {
	tok := audienceToken(t, context.Background(), adminClient(t), "kube-system", nodeapi.ReaderServiceAccount)
	code, body, err := httpsInNode(node, ip, nodeapi.MetricsPath, tok)
	if err == nil && code != http.StatusOK {
		err = fmt.Errorf("/metrics: %d %s", code, body)
	}
	return body, err
}

// serviceAccount creates a ServiceAccount in ns with the ClusterRoles and
// kube-system Roles given, and writes a kubeconfig with a token of it.
func serviceAccount(t testing.TB, ctx context.Context, c kubernetes.Interface, ns, name string, clusterRoles, kubeSystemRoles []string) (string, string) {
	t.Helper()
	if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	subj := []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: ns}}
	for _, r := range clusterRoles {
		b := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name + "-" + r}, Subjects: subj,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: r}}
		if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, b, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.RbacV1().ClusterRoleBindings().Delete(context.Background(), b.Name, metav1.DeleteOptions{})
		})
	}
	for _, r := range kubeSystemRoles {
		b := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Name: ns + "-" + name + "-" + r, Namespace: "kube-system"}, Subjects: subj,
			RoleRef: rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: r}}
		if _, err := c.RbacV1().RoleBindings("kube-system").Create(ctx, b, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = c.RbacV1().RoleBindings("kube-system").Delete(context.Background(), b.Name, metav1.DeleteOptions{})
		})
	}
	exp := int64(3600)
	tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name, &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := clientcmd.LoadFromFile(adminKubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	kc := clientcmdapi.NewConfig()
	cl := admin.Clusters[admin.Contexts[admin.CurrentContext].Cluster]
	kc.Clusters["c"] = cl
	kc.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	kc.Contexts["x"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	kc.CurrentContext = "x"
	path := filepath.Join(t.TempDir(), name+".kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path, tr.Status.Token
}

// leakAddress adds an allocation without a pod to the node's weft-ipam
// store (as a crashed runtime leaves one) and returns its address.
func leakAddress(t testing.TB, ctx context.Context, node, cidr string) string {
	t.Helper()
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		t.Fatal(err)
	}
	a := p.Masked().Addr()
	for range 250 {
		a = a.Next()
	}
	dir := filepath.Join(testutil.RepoRoot(), ".localcluster", "nodes", node, "var-lib-cni", "networks", "weft")
	err = disk.New(dir, disk.Options{}).Update(ctx, func(s *store.State) (bool, error) {
		for _, al := range s.Allocations {
			if al.IP == a {
				return false, fmt.Errorf("%s already allocated", a)
			}
		}
		s.Allocations = append(s.Allocations, store.Allocation{IP: a, ContainerID: "e2e-leaked-0123456789abcdef", IfName: "eth0"})
		return true, nil
	})
	if err != nil {
		t.Fatalf("leak an address in %s: %v", dir, err)
	}
	return a.String()
}

// stopWeftd freezes node's weftd (SIGSTOP: it holds its port and answers
// nothing) and returns the function that thaws it.
func stopWeftd(t testing.TB, node string) func() {
	t.Helper()
	pid, err := weftdPID(node)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	thawed := false
	thaw := func() {
		if !thawed {
			thawed = true
			_ = syscall.Kill(pid, syscall.SIGCONT)
		}
	}
	t.Cleanup(thaw)
	return thaw
}
