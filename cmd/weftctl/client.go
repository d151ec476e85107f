package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/spf13/cobra"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/nodeapi"
)

// globals are the flags every command shares: kubectl's kubeconfig and
// context flags, the output format, where weft runs.
type globals struct {
	loading   *clientcmd.ClientConfigLoadingRules
	overrides clientcmd.ConfigOverrides
	output    string
	weftNS    string
	weftLabel string
	port      int
	timeout   time.Duration
}

func (g *globals) bind(root *cobra.Command) {
	g.loading = clientcmd.NewDefaultClientConfigLoadingRules()
	fs := root.PersistentFlags()
	fs.StringVar(&g.loading.ExplicitPath, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG or ~/.kube/config)")
	clientcmd.BindOverrideFlags(&g.overrides, fs, clientcmd.RecommendedConfigOverrideFlags(""))
	fs.StringVarP(&g.output, "output", "o", "table", "output format: table, json or yaml")
	fs.StringVar(&g.weftNS, "weft-namespace", "kube-system", "namespace of the weft DaemonSet")
	fs.StringVar(&g.weftLabel, "weft-selector", "app=weft", "label selector of the weft pods")
	fs.IntVar(&g.port, "weft-port", nodeapi.DefaultPort, "weftd's operational API port")
	fs.DurationVar(&g.timeout, "node-timeout", 10*time.Second, "how long to wait for each node's weftd")
}

// env is a connected weftctl: the clientset and the weft pod of each node.
type env struct {
	g      *globals
	client kubernetes.Interface
	rest   rest.Interface
	tokens nodeTokens
}

// nodeTokens are the tokens weftctl shows weftd, one per ServiceAccount,
// requested once per run. The kubeconfig user's own credential never
// leaves for a node: a node's root would collect every operator's token.
type nodeTokens struct {
	mu  sync.Mutex
	tok map[string]string
}

// tokenTTL is the lifetime asked for (the TokenRequest API's minimum).
const tokenTTL = 10 * time.Minute

// nodeToken returns a token of the ServiceAccount path needs (the
// operator's for what changes a node or sends traffic, else the reader's)
// bound to nodeapi.Audience: weftd accepts only that audience and the
// apiserver refuses it. The user needs create on serviceaccounts/token for
// that ServiceAccount (the manifest's weftctl-reader and weftctl-operator
// Roles).
func (e *env) nodeToken(ctx context.Context, path string) (string, error) {
	sa := nodeapi.ReaderServiceAccount
	if path == nodeapi.ReleasePath || path == nodeapi.ProbePath {
		sa = nodeapi.OperatorServiceAccount
	}
	e.tokens.mu.Lock()
	defer e.tokens.mu.Unlock()
	if t, ok := e.tokens.tok[sa]; ok {
		return t, nil
	}
	exp := int64(tokenTTL / time.Second)
	tr, err := e.client.CoreV1().ServiceAccounts(e.g.weftNS).CreateToken(ctx, sa, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{Audiences: []string{nodeapi.Audience}, ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for weftd (create serviceaccounts/token %s/%s, audience %s): %s", e.g.weftNS, sa, nodeapi.Audience, explain(0, nil, err))
	}
	if e.tokens.tok == nil {
		e.tokens.tok = map[string]string{}
	}
	e.tokens.tok[sa] = tr.Status.Token
	return tr.Status.Token, nil
}

func (g *globals) connect() (*env, error) {
	if g.output != "table" && g.output != "json" && g.output != "yaml" {
		return nil, fmt.Errorf("--output %q: want table, json or yaml", g.output)
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(g.loading, &g.overrides).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	cfg.UserAgent = "weftctl"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &env{g: g, client: c, rest: c.CoreV1().RESTClient()}, nil
}

// weftPods maps node name to the running weft pod on it.
func (e *env) weftPods(ctx context.Context) (map[string]corev1.Pod, error) {
	l, err := e.client.CoreV1().Pods(e.g.weftNS).List(ctx, metav1.ListOptions{LabelSelector: e.g.weftLabel})
	if err != nil {
		return nil, fmt.Errorf("list weft pods: %w", err)
	}
	out := map[string]corev1.Pod{}
	for _, p := range l.Items {
		if p.Spec.NodeName == "" || p.DeletionTimestamp != nil {
			continue
		}
		if cur, ok := out[p.Spec.NodeName]; !ok || cur.Status.Phase != corev1.PodRunning {
			out[p.Spec.NodeName] = p
		}
	}
	return out, nil
}

// nodes lists the cluster's nodes by name.
func (e *env) nodes(ctx context.Context) ([]corev1.Node, error) {
	l, err := e.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list nodes: %w", err)
	}
	sort.Slice(l.Items, func(i, j int) bool { return l.Items[i].Name < l.Items[j].Name })
	return l.Items, nil
}

// call asks one weft pod: GET when in is nil, else POST in as JSON; the
// answer is decoded into out.
func (e *env) call(ctx context.Context, pod corev1.Pod, path string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, e.g.timeout)
	defer cancel()
	tok, err := e.nodeToken(ctx, path)
	if err != nil {
		return fmt.Errorf("weftd on %s: %w", pod.Spec.NodeName, err)
	}
	name := "https:" + pod.Name + ":" + strconv.Itoa(e.g.port)
	req := e.rest.Get()
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		req = e.rest.Post().Body(bytes.NewReader(b)).SetHeader("Content-Type", "application/json")
	}
	req = req.SetHeader(nodeapi.TokenHeader, "Bearer "+tok)
	var code int
	raw, err := req.Namespace(pod.Namespace).Resource("pods").Name(name).SubResource("proxy").Suffix(path).
		Do(ctx).StatusCode(&code).Raw()
	if err != nil {
		return fmt.Errorf("weftd on %s (pod %s): %s", pod.Spec.NodeName, pod.Name, explain(code, raw, err))
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("weftd on %s: bad answer: %w", pod.Spec.NodeName, err)
	}
	return nil
}

// explain turns a failed proxy call into one line with its HTTP code
// (client-go keeps it only in the error when weftd answers text).
func explain(code int, raw []byte, err error) string {
	var st apierrors.APIStatus
	if code == 0 && errors.As(err, &st) {
		code = int(st.Status().Code)
	}
	detail := string(bytes.TrimSpace(raw))
	if detail == "" {
		detail = err.Error()
	}
	if len(detail) > 300 {
		detail = detail[:300] + "..."
	}
	switch {
	case code == http.StatusUnauthorized:
		return "401 unauthorized (weftd accepts only tokens bound to audience " + nodeapi.Audience + "): " + detail
	case code == http.StatusForbidden:
		return "403 forbidden: " + detail
	case code != 0:
		return fmt.Sprintf("%d: %s", code, detail)
	}
	return detail
}

// nodeAnswer is one node's answer or why it has none.
type nodeAnswer[T any] struct {
	node string
	val  T
	err  error
}

// each asks every node's weftd in parallel; a node without a weft pod is
// an error of its own.
func each[T any](ctx context.Context, e *env, nodes []string, pods map[string]corev1.Pod, ask func(context.Context, corev1.Pod) (T, error)) []nodeAnswer[T] {
	out := make([]nodeAnswer[T], len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		out[i].node = n
		pod, ok := pods[n]
		if !ok {
			out[i].err = fmt.Errorf("no weft pod on node %s", n)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			out[i].val, out[i].err = ask(ctx, pod)
		}()
	}
	wg.Wait()
	return out
}

// get is each for a GET of path.
func get[T any](ctx context.Context, e *env, nodes []string, pods map[string]corev1.Pod, path string) []nodeAnswer[T] {
	return each(ctx, e, nodes, pods, func(ctx context.Context, p corev1.Pod) (T, error) {
		var v T
		err := e.call(ctx, p, path, nil, &v)
		return v, err
	})
}

// nodesAndPods lists the nodes and the weft pod of each.
func (e *env) nodesAndPods(ctx context.Context) ([]corev1.Node, map[string]corev1.Pod, error) {
	nodes, err := e.nodes(ctx)
	if err != nil {
		return nil, nil, err
	}
	pods, err := e.weftPods(ctx)
	return nodes, pods, err
}

func names(nodes []corev1.Node) []string {
	out := make([]string, len(nodes))
	for i, n := range nodes {
		out[i] = n.Name
	}
	return out
}
