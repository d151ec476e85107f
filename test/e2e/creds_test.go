package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weftnet/weft/internal/testutil"
)

// checkCredentials checks that nothing on the nodes runs as admin: each
// node emulator authenticates as system:node:<name> (group system:nodes),
// and weftd (when the cluster runs it from manifests/weft.yaml) as the
// kube-system/weft ServiceAccount, neither allowed to read Secrets.
func checkCredentials(t *testing.T, ctx context.Context) {
	t.Helper()
	stateDir := filepath.Join(testutil.RepoRoot(), ".localcluster")
	var st struct {
		CNI string `json:"cni"`
	}
	if data, err := os.ReadFile(filepath.Join(stateDir, "state.json")); err != nil {
		t.Fatalf("cluster state: %v", err)
	} else if err := json.Unmarshal(data, &st); err != nil {
		t.Fatalf("cluster state: %v", err)
	}
	for i := 1; i <= e2eNodes; i++ {
		node := fmt.Sprintf("wl-node%d", i)
		cfg, err := clientcmd.BuildConfigFromFlags("", filepath.Join(stateDir, "nodes", node, "kubeconfig"))
		if err != nil {
			t.Fatalf("node kubeconfig: %v", err)
		}
		checkIdentity(t, ctx, cfg, "system:node:"+node, "system:nodes")
		if st.CNI != "manifest" {
			continue
		}
		tok, err := os.ReadFile(filepath.Join(stateDir, "nodes", node, "var-run-secrets-kubernetes.io-serviceaccount", "token"))
		if err != nil {
			t.Errorf("weftd token on %s: %v", node, err)
			continue
		}
		sa := rest.AnonymousClientConfig(cfg)
		sa.BearerToken = strings.TrimSpace(string(tok))
		checkIdentity(t, ctx, sa, "system:serviceaccount:kube-system:weft", "system:serviceaccounts")
	}
}

func checkIdentity(t *testing.T, ctx context.Context, cfg *rest.Config, wantUser, wantGroup string) {
	t.Helper()
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	r, err := c.AuthenticationV1().SelfSubjectReviews().Create(ctx, &authnv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Errorf("whoami as %s: %v", wantUser, err)
		return
	}
	u := r.Status.UserInfo
	if u.Username != wantUser || !slices.Contains(u.Groups, wantGroup) || slices.Contains(u.Groups, "system:masters") {
		t.Errorf("identity = %s %v, want %s in %s and not system:masters", u.Username, u.Groups, wantUser, wantGroup)
	}
	ar, err := c.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx, &authzv1.SelfSubjectAccessReview{
		Spec: authzv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &authzv1.ResourceAttributes{Verb: "list", Resource: "secrets"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Errorf("access review as %s: %v", wantUser, err)
		return
	}
	if ar.Status.Allowed {
		t.Errorf("%s may list all secrets: more than its role", wantUser)
	}
}
