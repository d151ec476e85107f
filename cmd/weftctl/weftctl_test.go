package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/spf13/cobra"
	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/weftnet/weft/internal/nodeapi"
)

// weftd never sees the kubeconfig user's own token: for each node call
// weftctl asks the TokenRequest API (as that user) for a token of weft's
// reader ServiceAccount, or the operator's for release and probe, bound to
// nodeapi.Audience and expiring in 10 minutes, and sends it in
// nodeapi.TokenHeader through the proxy; one token per ServiceAccount per
// run. The user's token stays in Authorization, for the apiserver only.
func TestNodeTokenIsAudienceBound(t *testing.T) {
	var mu sync.Mutex
	var seen []string // TokenHeader of each proxied call, by path
	requests := map[string]authv1.TokenRequestSpec{}
	counts := map[string]int{}
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		if sa, ok := strings.CutPrefix(r.URL.Path, "/api/v1/namespaces/kube-system/serviceaccounts/"); ok && r.Method == "POST" {
			sa = strings.TrimSuffix(sa, "/token")
			body, _ := io.ReadAll(r.Body)
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(body, nil, nil)
			tr, ok := obj.(*authv1.TokenRequest)
			if err != nil || !ok || r.Header.Get("Authorization") != "Bearer kc-token" {
				http.Error(w, fmt.Sprintf("bad token request: %v %T", err, obj), 400)
				return
			}
			requests[sa], counts[sa] = tr.Spec, counts[sa]+1
			tr.Status.Token = "sa-" + sa
			tr.Kind, tr.APIVersion = "TokenRequest", "authentication.k8s.io/v1"
			_ = json.NewEncoder(w).Encode(tr)
			return
		}
		if _, path, ok := strings.Cut(r.URL.Path, "/proxy"); ok {
			seen = append(seen, path+" "+r.Header.Get(nodeapi.TokenHeader))
		}
		_, _ = w.Write([]byte(`{}`))
	}))
	defer srv.Close()
	kc := filepath.Join(t.TempDir(), "kubeconfig")
	data := "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: " + srv.URL + "}}]\n" +
		"users: [{name: u, user: {token: kc-token}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"
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
	pod := corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "weft-x"}, Spec: corev1.PodSpec{NodeName: "n1"}}
	var out struct{}
	for _, c := range []struct {
		path string
		in   any
	}{{nodeapi.NodePath, nil}, {nodeapi.IPAMPath, nil}, {nodeapi.ProbePath, nodeapi.ProbeRequest{}}, {nodeapi.ReleasePath, nodeapi.ReleaseRequest{}}} {
		if err := e.call(context.Background(), pod, c.path, c.in, &out); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{nodeapi.NodePath + " Bearer sa-weft-ctl-reader", nodeapi.IPAMPath + " Bearer sa-weft-ctl-reader",
		nodeapi.ProbePath + " Bearer sa-weft-ctl-operator", nodeapi.ReleasePath + " Bearer sa-weft-ctl-operator"}
	if !slices.Equal(seen, want) {
		t.Errorf("%s sent to weftd: %q, want %q", nodeapi.TokenHeader, seen, want)
	}
	for _, sa := range []string{nodeapi.ReaderServiceAccount, nodeapi.OperatorServiceAccount} {
		spec := requests[sa]
		if counts[sa] != 1 || !slices.Equal(spec.Audiences, []string{nodeapi.Audience}) || spec.ExpirationSeconds == nil || *spec.ExpirationSeconds != 600 {
			t.Errorf("token requests for %s: %d, last %+v; want one, audience %s, 600 s", sa, counts[sa], spec, nodeapi.Audience)
		}
	}
}

// An allocation is leaked when the API has no pod for it: by the recorded
// UID (by name when the record has none), or without a record by a pod on
// the node holding the address; never while its container's ADD runs.
func TestLeaked(t *testing.T) {
	pods := []corev1.Pod{{ObjectMeta: metav1.ObjectMeta{UID: types.UID("u1"), Namespace: "a", Name: "p1"}, Spec: corev1.PodSpec{NodeName: "n1"},
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
		{nodeapi.Allocation{IP: "10.244.1.9"}, "n1", true},                                    // a hostNetwork pod holds no pod address
		{nodeapi.Allocation{IP: "10.244.1.7", Adding: true}, "n1", false},                     // allocated, record not yet written
		{nodeapi.Allocation{IP: "10.244.1.7", PodNamespace: "a", PodName: "p1"}, "n1", false}, // record without UID, status not posted yet
		{nodeapi.Allocation{IP: "10.244.1.7", PodNamespace: "a", PodName: "p1"}, "n2", true},
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
