package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authzv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/testutil"
)

// weftSA is weftd's identity (manifests/weft.yaml) with the groups the
// apiserver gives every ServiceAccount token.
var weftSA = authzv1.SubjectAccessReviewSpec{
	User:   "system:serviceaccount:kube-system:weft",
	Groups: []string{"system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"},
}

// checkManifest: manifests/weft.yaml passes the apiserver's own validation
// (kubectl apply --dry-run=server, strict field validation, and the same
// file with an unknown field does not), and weftd's ServiceAccount may do
// everything the file's roles grant (each rule with a comment giving its
// reason) and none of a list of things weftd has no business doing.
func checkManifest(t *testing.T, ctx context.Context, client kubernetes.Interface) {
	t.Helper()
	path := filepath.Join(testutil.RepoRoot(), "manifests", "weft.yaml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	checkServerDryRun(t, ctx, data)
	rules := manifestRules(t, data)
	if len(rules) == 0 {
		t.Fatalf("%s grants nothing: no ClusterRole or Role rules found", path)
	}
	for _, r := range rules {
		for _, attr := range r.grants() {
			if !weftMay(t, ctx, client, attr) {
				t.Errorf("the manifest grants %s but the apiserver says weftd may not", describe(attr))
			}
		}
	}
	for _, d := range weftMustNot {
		if weftMay(t, ctx, client, d.attr) {
			t.Errorf("weftd's ServiceAccount may %s: %s", d.what, describe(d.attr))
		}
	}
	checkCommentedRules(t, string(data))
	checkForbiddenLive(t, ctx, client)
}

// weftMustNot is what weftd never does; each entry would widen what a
// compromised node agent can reach.
var weftMustNot = []struct {
	what string
	attr authzv1.ResourceAttributes
}{
	{"delete a pod", authzv1.ResourceAttributes{Namespace: "default", Verb: "delete", Resource: "pods"}},
	{"create a pod", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "create", Resource: "pods"}},
	{"change a pod", authzv1.ResourceAttributes{Namespace: "default", Verb: "patch", Resource: "pods"}},
	{"exec into a pod", authzv1.ResourceAttributes{Namespace: "default", Verb: "create", Resource: "pods", Subresource: "exec"}},
	{"evict a pod", authzv1.ResourceAttributes{Namespace: "default", Verb: "create", Resource: "pods", Subresource: "eviction"}},
	{"list Secrets", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "list", Resource: "secrets"}},
	{"watch Secrets", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "watch", Resource: "secrets"}},
	{"read another Secret", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "get", Resource: "secrets", Name: "weft-other"}},
	{"read the BGP Secret's name elsewhere", authzv1.ResourceAttributes{Namespace: "default", Verb: "get", Resource: "secrets", Name: "weft-bgp-passwords"}},
	{"change the BGP Secret", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "update", Resource: "secrets", Name: "weft-bgp-passwords"}},
	{"list Secrets cluster-wide", authzv1.ResourceAttributes{Verb: "list", Resource: "secrets"}},
	{"change its ConfigMap", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "update", Resource: "configmaps", Name: "weft"}},
	{"delete a node", authzv1.ResourceAttributes{Verb: "delete", Resource: "nodes"}},
	{"create a node", authzv1.ResourceAttributes{Verb: "create", Resource: "nodes"}},
	{"change a node's status", authzv1.ResourceAttributes{Verb: "patch", Resource: "nodes", Subresource: "status"}},
	{"write NetworkPolicies", authzv1.ResourceAttributes{Namespace: "default", Verb: "create", Group: "networking.k8s.io", Resource: "networkpolicies"}},
	{"take Leases outside kube-system", authzv1.ResourceAttributes{Namespace: "default", Verb: "create", Group: "coordination.k8s.io", Resource: "leases"}},
	{"mint ServiceAccount tokens", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "create", Resource: "serviceaccounts", Subresource: "token"}},
	{"impersonate", authzv1.ResourceAttributes{Verb: "impersonate", Resource: "users"}},
	{"bind roles", authzv1.ResourceAttributes{Verb: "create", Group: "rbac.authorization.k8s.io", Resource: "clusterrolebindings"}},
	{"change its own role", authzv1.ResourceAttributes{Verb: "update", Group: "rbac.authorization.k8s.io", Resource: "clusterroles", Name: "weft"}},
	{"change its DaemonSet", authzv1.ResourceAttributes{Namespace: "kube-system", Verb: "patch", Group: "apps", Resource: "daemonsets", Name: "weft"}},
}

func describe(a authzv1.ResourceAttributes) string {
	s := a.Verb + " " + a.Group + "/" + a.Resource
	if a.Subresource != "" {
		s += "/" + a.Subresource
	}
	if a.Name != "" {
		s += " " + a.Name
	}
	if a.Namespace != "" {
		s += " in " + a.Namespace
	}
	return s
}

func weftMay(t *testing.T, ctx context.Context, client kubernetes.Interface, attr authzv1.ResourceAttributes) bool {
	t.Helper()
	spec := weftSA
	spec.ResourceAttributes = &attr
	r, err := client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authzv1.SubjectAccessReview{Spec: spec}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("SubjectAccessReview %s: %v", describe(attr), err)
	}
	return r.Status.Allowed
}

// checkServerDryRun applies the manifest with --dry-run=server (the
// apiserver validates and admits every object, strict field validation,
// nothing is stored), then a copy with an unknown field, which must fail.
func checkServerDryRun(t *testing.T, ctx context.Context, manifest []byte) {
	t.Helper()
	out, err := kubectlApplyDryRun(ctx, manifest)
	if err != nil {
		t.Fatalf("kubectl apply --dry-run=server -f manifests/weft.yaml: %v\n%s", err, out)
	}
	for _, obj := range []string{"serviceaccount/weft", "clusterrole.rbac.authorization.k8s.io/weft",
		"role.rbac.authorization.k8s.io/weft", "clusterrolebinding.rbac.authorization.k8s.io/weft",
		"rolebinding.rbac.authorization.k8s.io/weft", "configmap/weft", "daemonset.apps/weft",
		"validatingadmissionpolicy.admissionregistration.k8s.io/weft-own-node-annotations",
		"validatingadmissionpolicybinding.admissionregistration.k8s.io/weft-own-node-annotations"} {
		if !strings.Contains(out, obj) {
			t.Errorf("dry-run output does not name %s:\n%s", obj, out)
		}
	}
	t.Logf("kubectl apply --dry-run=server:\n%s", strings.TrimSpace(out))
	bad := bytes.Replace(manifest, []byte("      hostNetwork: true\n"), []byte("      hostNetwork: true\n      hostNetworks: true\n"), 1)
	if bytes.Equal(bad, manifest) {
		t.Fatal("manifest has no \"hostNetwork: true\" line to corrupt")
	}
	if out, err := kubectlApplyDryRun(ctx, bad); err == nil || !strings.Contains(out, "hostNetworks") {
		t.Errorf("a DaemonSet with an unknown field passed the server dry run (%v):\n%s", err, out)
	}
}

func kubectlApplyDryRun(ctx context.Context, manifest []byte) (string, error) {
	lc := filepath.Join(testutil.RepoRoot(), ".localcluster")
	cmd := exec.CommandContext(ctx, filepath.Join(lc, "bin", "kubectl"), "--kubeconfig", filepath.Join(lc, "kubeconfig"),
		"apply", "--dry-run=server", "--validate=strict", "-f", "-")
	cmd.Stdin = bytes.NewReader(manifest)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// manifestRule is one RBAC rule of the manifest with the namespace it holds
// in ("" for a ClusterRole).
type manifestRule struct {
	rbacv1.PolicyRule
	namespace string
}

// grants lists each (group, resource, verb, name) the rule allows.
func (r manifestRule) grants() []authzv1.ResourceAttributes {
	names := r.ResourceNames
	if len(names) == 0 {
		names = []string{""}
	}
	var out []authzv1.ResourceAttributes
	for _, g := range r.APIGroups {
		for _, res := range r.Resources {
			res, sub, _ := strings.Cut(res, "/")
			for _, verb := range r.Verbs {
				for _, n := range names {
					out = append(out, authzv1.ResourceAttributes{Namespace: r.namespace, Verb: verb, Group: g,
						Resource: res, Subresource: sub, Name: n})
				}
			}
		}
	}
	return out
}

func manifestRules(t *testing.T, data []byte) []manifestRule {
	t.Helper()
	var rules []manifestRule
	dec := yaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var obj struct {
			Kind     string              `json:"kind"`
			Metadata metav1.ObjectMeta   `json:"metadata"`
			Rules    []rbacv1.PolicyRule `json:"rules"`
		}
		if err := dec.Decode(&obj); err != nil {
			if err.Error() == "EOF" {
				return rules
			}
			t.Fatalf("decode manifest: %v", err)
		}
		// weftd holds the ClusterRole and the Role named weft; the others
		// are for weftctl's ServiceAccounts and its human users.
		if obj.Kind != "ClusterRole" && obj.Kind != "Role" || obj.Metadata.Name != "weft" {
			continue
		}
		for _, r := range obj.Rules {
			rules = append(rules, manifestRule{r, obj.Metadata.Namespace})
		}
	}
}

// checkCommentedRules: every rule under a `rules:` key is preceded by a
// comment line (its reason).
func checkCommentedRules(t *testing.T, text string) {
	t.Helper()
	lines := strings.Split(text, "\n")
	inRules := false
	for i, l := range lines {
		trim := strings.TrimSpace(l)
		switch {
		case trim == "rules:":
			inRules = true
		case inRules && !strings.HasPrefix(l, " ") && trim != "":
			inRules = false
		case inRules && strings.HasPrefix(trim, "- apiGroups:"):
			if j := i - 1; j < 0 || !strings.HasPrefix(strings.TrimSpace(lines[j]), "#") {
				t.Errorf("manifests/weft.yaml line %d: rule %q has no comment giving its reason", i+1, trim)
			}
		}
	}
}

// checkForbiddenLive uses weftd's real token (the one the node emulator
// mounted into its pod) against the apiserver: deleting a pod (as a dry
// run, so nothing is deleted if it were allowed) and reading or listing
// Secrets other than the BGP one are refused with 403.
func checkForbiddenLive(t *testing.T, ctx context.Context, admin kubernetes.Interface) {
	t.Helper()
	lc := filepath.Join(testutil.RepoRoot(), ".localcluster")
	tok, err := os.ReadFile(filepath.Join(lc, "nodes", "wl-node1", "var-run-secrets-kubernetes.io-serviceaccount", "token"))
	if err != nil {
		// The cluster always runs the manifest's DaemonSet: without the
		// token every check below (the admission policy too) would pass unseen.
		t.Fatalf("no weftd token on wl-node1 (the node emulator mounts the pod's ServiceAccount token there): %v", err)
	}
	base, err := clientcmd.BuildConfigFromFlags("", filepath.Join(lc, "kubeconfig"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := rest.AnonymousClientConfig(base)
	cfg.BearerToken = strings.TrimSpace(string(tok))
	weft, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	other := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "weft-e2e-other", Namespace: "kube-system"}, StringData: map[string]string{"k": "v"}}
	if _, err := admin.CoreV1().Secrets("kube-system").Create(ctx, other, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	defer func() {
		_ = admin.CoreV1().Secrets("kube-system").Delete(context.WithoutCancel(ctx), other.Name, metav1.DeleteOptions{})
	}()
	pods, err := admin.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app=weft"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("weft pods: %v (%d)", err, len(pods.Items))
	}
	victim := pods.Items[0].Name
	dry := metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}}
	for what, call := range map[string]func() error{
		"delete pod kube-system/" + victim: func() error { return weft.CoreV1().Pods("kube-system").Delete(ctx, victim, dry) },
		"get secret kube-system/" + other.Name: func() error {
			_, err := weft.CoreV1().Secrets("kube-system").Get(ctx, other.Name, metav1.GetOptions{})
			return err
		},
		"list secrets in kube-system": func() error {
			_, err := weft.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		},
	} {
		if err := call(); !apierrors.IsForbidden(err) {
			t.Errorf("as weftd's ServiceAccount, %s: got %v, want 403 Forbidden", what, err)
		}
	}
	checkOwnNodeOnly(t, ctx, weft)
	checkSubnetLeasesOnly(t, ctx, admin, weft)
	// What it needs still works with the same token.
	if _, err := weft.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err != nil {
		t.Errorf("as weftd's ServiceAccount, list nodes: %v", err)
	}
	if _, err := weft.CoreV1().Secrets("kube-system").Get(ctx, "weft-bgp-passwords", metav1.GetOptions{}); err != nil && !apierrors.IsNotFound(err) {
		t.Errorf("as weftd's ServiceAccount, get the BGP Secret: %v, want it or NotFound", err)
	}
}

// checkOwnNodeOnly: the manifest's ValidatingAdmissionPolicy lets weftd's
// token (bound to its pod on wl-node1) patch only wl-node1, and there only
// weft.dev/* annotations. Every patch is a server-side dry run: admission
// runs, nothing is stored.
func checkOwnNodeOnly(t *testing.T, ctx context.Context, weft kubernetes.Interface) {
	t.Helper()
	// What weftd itself writes passes the policy: every node's weftd has
	// published its address (as weft.dev/public-ip, through the policy).
	err := waitFor(ctx, time.Minute, func() (bool, error) {
		nodes, err := weft.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return false, err
		}
		for _, n := range nodes.Items {
			if n.Annotations[backend.AnnoPublicIP] == "" {
				return false, fmt.Errorf("node %s has no %s annotation", n.Name, backend.AnnoPublicIP)
			}
		}
		return len(nodes.Items) == e2eNodes, fmt.Errorf("%d nodes", len(nodes.Items))
	})
	if err != nil {
		t.Errorf("weftd's own annotations: %v", err)
	}
	dry := metav1.PatchOptions{DryRun: []string{metav1.DryRunAll}}
	patch := func(node, body string) error {
		_, err := weft.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(body), dry)
		return err
	}
	if err := patch("wl-node1", `{"metadata":{"annotations":{"weft.dev/e2e-probe":"x"}}}`); err != nil {
		t.Errorf("as weftd on wl-node1, annotate its own node with weft.dev/e2e-probe: %v", err)
	}
	for what, c := range map[string]struct{ node, body string }{
		"annotate another node":              {"wl-node2", `{"metadata":{"annotations":{"weft.dev/public-ip":"172.18.0.99"}}}`},
		"label its own node":                 {"wl-node1", `{"metadata":{"labels":{"weft.dev/route-reflector":"true"}}}`},
		"set a foreign annotation":           {"wl-node1", `{"metadata":{"annotations":{"example.com/x":"y"}}}`},
		"taint its own node":                 {"wl-node1", `{"spec":{"taints":[{"key":"weft.dev/x","effect":"NoSchedule"}]}}`},
		"make its own node unschedulable":    {"wl-node1", `{"spec":{"unschedulable":true}}`},
		"change another node's pod CIDR key": {"wl-node3", `{"metadata":{"annotations":{"weft.dev/pod-cidr":null}}}`},
	} {
		err := patch(c.node, c.body)
		if !apierrors.IsForbidden(err) || !strings.Contains(err.Error(), "weftd may change only") {
			t.Errorf("as weftd on wl-node1, %s (%s %s): got %v, want 403 from the weft-own-node-annotations policy", what, c.node, c.body, err)
		}
	}
}
