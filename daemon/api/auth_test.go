package api

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/weftnet/weft/internal/nodeapi"
)

// fakeReviews answers TokenReviews (token "good" is user alice, "reader"
// is user bob) and SubjectAccessReviews (bob may get /v1/node only).
func fakeReviews(reviews *atomic.Int32) *fake.Clientset {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		switch tr.Spec.Token {
		case "good":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "alice", UID: "1"}}
		case "reader":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: authnv1.UserInfo{Username: "bob", UID: "2", Groups: []string{"g"}}}
		}
		return true, tr, nil
	})
	c.PrependReactor("create", "subjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		sar := a.(k8stesting.CreateAction).GetObject().(*authzv1.SubjectAccessReview)
		nr := sar.Spec.NonResourceAttributes
		sar.Status.Allowed = sar.Spec.User == "bob" && nr != nil && nr.Path == nodeapi.NodePath && nr.Verb == "get"
		return true, sar, nil
	})
	return c
}

// The operational API: no token 401, an invalid token 401, a user the SAR
// does not allow 403 (path and verb are the non-resource attributes), an
// allowed user 200, with the token in Authorization or in the header that
// survives the apiserver's proxy; answers are cached.
func TestGuard(t *testing.T) {
	var reviews atomic.Int32
	g := NewGuard(KubeReviewer{Client: fakeReviews(&reviews)}, slog.New(slog.DiscardHandler))
	routes := NewRoutes()
	if err := routes.Handle(nodeapi.NodePath, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("state")) })); err != nil {
		t.Fatal(err)
	}
	h := SecureHandler(routes, NewMetrics().Registry, g)
	do := func(method, path, header, tok string) (int, string) {
		req := httptest.NewRequest(method, path, nil)
		if tok != "" {
			req.Header.Set(header, "Bearer "+tok)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	cases := []struct {
		method, path, header, tok string
		want                      int
	}{
		{"GET", nodeapi.NodePath, "Authorization", "", 401},
		{"GET", nodeapi.MetricsPath, "Authorization", "", 401},
		{"GET", nodeapi.NodePath, "Authorization", "forged", 401},
		{"GET", nodeapi.NodePath, "Authorization", "good", 403},
		{"GET", nodeapi.MetricsPath, "Authorization", "reader", 403},
		{"POST", nodeapi.NodePath, "Authorization", "reader", 403},
		{"GET", nodeapi.NodePath, "Authorization", "reader", 200},
		{"GET", nodeapi.NodePath, nodeapi.TokenHeader, "reader", 200},
	}
	for _, c := range cases {
		code, body := do(c.method, c.path, c.header, c.tok)
		if code != c.want {
			t.Errorf("%s %s with %s %q: %d %q, want %d", c.method, c.path, c.header, c.tok, code, body, c.want)
		}
		if code == 200 && body != "state" {
			t.Errorf("body %q", body)
		}
		if code == 403 && !strings.Contains(body, "may not") {
			t.Errorf("403 body %q", body)
		}
	}
	before := reviews.Load()
	for range 5 {
		do("GET", nodeapi.NodePath, "Authorization", "reader")
	}
	if reviews.Load() != before {
		t.Errorf("token reviews not cached: %d more", reviews.Load()-before)
	}
}
