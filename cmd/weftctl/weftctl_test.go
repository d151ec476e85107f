package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/nodeapi"
)

// The kubeconfig user's bearer token also travels in nodeapi.TokenHeader
// (the apiserver consumes Authorization before proxying to weftd), for a
// token read from the kubeconfig or from a token file.
func TestTokenForwarded(t *testing.T) {
	var got, auth string
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got, auth = r.Header.Get(nodeapi.TokenHeader), r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"kind":"NodeList","apiVersion":"v1","items":[]}`))
	}))
	defer srv.Close()
	dir := t.TempDir()
	tokFile := filepath.Join(dir, "tok")
	if err := os.WriteFile(tokFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for user, want := range map[string]string{"token: kc-token": "Bearer kc-token", "tokenFile: " + tokFile: "Bearer file-token"} {
		kc := filepath.Join(dir, "kubeconfig")
		data := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: " + srv.URL + "}}]\n" +
			"users: [{name: u, user: {" + user + "}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
		if err := os.WriteFile(kc, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		g := &globals{}
		g.bind(&cobra.Command{})
		g.loading.ExplicitPath = kc
		g.overrides.ClusterInfo.InsecureSkipTLSVerify = true // the test server's certificate
		e, err := g.connect()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.nodes(context.Background()); err != nil {
			t.Fatal(err)
		}
		if got != want || auth != want {
			t.Errorf("%s: %s %q, Authorization %q; want both %q", user, nodeapi.TokenHeader, got, auth, want)
		}
	}
}

// An allocation is leaked when the API has no pod for it: by the recorded
// UID, or without a record by a pod on the node holding the address.
func TestLeaked(t *testing.T) {
	pods := []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{UID: types.UID("u1")}, Spec: corev1.PodSpec{NodeName: "n1"},
		Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.244.1.2"}}}},
		{ObjectMeta: metav1.ObjectMeta{UID: types.UID("h")}, Spec: corev1.PodSpec{NodeName: "n1", HostNetwork: true},
			Status: corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: "10.244.1.9"}}}}}
	for _, c := range []struct {
		a    nodeapi.Allocation
		node string
		want bool
	}{
		{nodeapi.Allocation{IP: "10.244.1.2", PodUID: "u1"}, "n1", false},
		{nodeapi.Allocation{IP: "10.244.1.2", PodUID: "u-old"}, "n1", true}, // the address reused by another pod
		{nodeapi.Allocation{IP: "10.244.1.2"}, "n1", false},
		{nodeapi.Allocation{IP: "10.244.1.2"}, "n2", true},
		{nodeapi.Allocation{IP: "10.244.1.9"}, "n1", true}, // a hostNetwork pod holds no pod address
	} {
		if got := leaked(c.a, c.node, pods); got != c.want {
			t.Errorf("leaked(%+v on %s) = %v, want %v", c.a, c.node, got, c.want)
		}
	}
}

// weftd's text answers through the proxy keep their HTTP code in the
// message (client-go only keeps it inside the error).
func TestExplain(t *testing.T) {
	err := apierrors.NewGenericServerResponse(403, "get", schema.GroupResource{Resource: "pods"}, "https:weft-x:9413",
		`user "u" may not get /v1/node on weftd`, 0, true)
	if got := explain(0, nil, err); !strings.HasPrefix(got, "403 forbidden: ") || !strings.Contains(got, "may not get /v1/node") {
		t.Errorf("explain = %q", got)
	}
	if got := explain(401, []byte("Unauthorized: the token is not valid\n"), err); !strings.HasPrefix(got, "401 unauthorized") || !strings.HasSuffix(got, "not valid") {
		t.Errorf("explain = %q", got)
	}
}
