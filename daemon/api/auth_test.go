package api

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"slices"
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

// fakeReviews answers TokenReviews as an apiserver does: tokens "good"
// (user alice) and "reader" (user bob) are bound to nodeapi.Audience,
// "apiserver" (user bob) to the apiserver's own audience, and each
// authenticates only when the review asks for an audience it has (none
// asked: the apiserver's; the status names the ones in common); "legacy" (user bob) authenticates
// whatever is asked, with the apiserver's audience in the status, as an
// apiserver that ignores spec.audiences would answer. SubjectAccessReviews:
// bob may get /v1/node only.
func fakeReviews(reviews *atomic.Int32) *fake.Clientset {
	c := fake.NewClientset()
	c.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		reviews.Add(1)
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		users := map[string]authnv1.UserInfo{"good": {Username: "alice", UID: "1"}, "reader": {Username: "bob", UID: "2", Groups: []string{"g"}}}
		users["apiserver"], users["legacy"] = users["reader"], users["reader"]
		auds := map[string][]string{"good": {nodeapi.Audience}, "reader": {nodeapi.Audience}, "apiserver": {"https://kubernetes.default.svc"}}
		if tr.Spec.Token == "legacy" {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: users["legacy"], Audiences: []string{"https://kubernetes.default.svc"}}
			return true, tr, nil
		}
		asked := tr.Spec.Audiences
		if len(asked) == 0 { // the apiserver's default: its own audience
			asked = []string{"https://kubernetes.default.svc"}
		}
		var common []string
		for _, want := range asked {
			if slices.Contains(auds[tr.Spec.Token], want) {
				common = append(common, want)
			}
		}
		if len(common) > 0 {
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, User: users[tr.Spec.Token], Audiences: common}
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
		{"GET", nodeapi.NodePath, "Authorization", "apiserver", 401},
		{"GET", nodeapi.NodePath, nodeapi.TokenHeader, "apiserver", 401},
		{"GET", nodeapi.NodePath, "Authorization", "legacy", 401},
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

// stubReviewer authenticates each token as the user it maps to and allows
// a request only for users in the group "ops" exactly, or whose extra
// "scope" is "weft"; it counts access reviews.
type stubReviewer struct {
	users map[string]authnv1.UserInfo
	sars  atomic.Int32
}

func (s *stubReviewer) Authenticate(_ context.Context, tok string) (authnv1.UserInfo, bool, error) {
	u, ok := s.users[tok]
	return u, ok, nil
}

func (s *stubReviewer) Authorize(_ context.Context, u authnv1.UserInfo, _, _ string) (bool, string, error) {
	s.sars.Add(1)
	return slices.Contains(u.Groups, "ops") || slices.Equal(u.Extra["scope"], []string{"weft"}), "", nil
}

// A cached allow is the allow of one identity: two tokens of the same user
// name and UID whose groups or extra differ (an OIDC token with other
// claims, a pod-bound token of another pod) each get their own review, even
// when the groups print alike ("a b" and "a", "b").
func TestGuardVerdictCacheKeyIsTheWholeIdentity(t *testing.T) {
	r := &stubReviewer{users: map[string]authnv1.UserInfo{
		"spaced":   {Username: "carol", UID: "3", Groups: []string{"ops x"}},
		"split":    {Username: "carol", UID: "3", Groups: []string{"ops", "x"}},
		"scoped":   {Username: "dave", UID: "4", Extra: map[string]authnv1.ExtraValue{"scope": {"weft"}}},
		"unscoped": {Username: "dave", UID: "4", Extra: map[string]authnv1.ExtraValue{"scope": {"other"}}},
	}}
	g := NewGuard(r, slog.New(slog.DiscardHandler))
	h := g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("state")) }))
	do := func(tok string) int { code, _ := getNode(h, tok); return code }
	for _, c := range []struct {
		first, second string
		want          [2]int
	}{{"split", "spaced", [2]int{200, 403}}, {"scoped", "unscoped", [2]int{200, 403}}} {
		if got := [2]int{do(c.first), do(c.second)}; got != c.want {
			t.Errorf("%s then %s: %v, want %v (a cached verdict of another identity)", c.first, c.second, got, c.want)
		}
	}
	if n := r.sars.Load(); n != 4 {
		t.Errorf("%d access reviews, want 4 (one per identity)", n)
	}
}

// errReviewer fails every review with an error naming apiserver internals.
type errReviewer struct{}

func (errReviewer) Authenticate(context.Context, string) (authnv1.UserInfo, bool, error) {
	return authnv1.UserInfo{}, false, errors.New("dial tcp 10.96.0.1:443: secret-internal-detail")
}

func (errReviewer) Authorize(context.Context, authnv1.UserInfo, string, string) (bool, string, error) {
	return false, "", errors.New("secret-internal-detail")
}

// A token longer than 16 KiB is refused with 401 without a TokenReview;
// a failed review answers 503 with a generic message (the error is
// logged, not shown to the caller).
func TestGuardRefusesHugeTokensAndHidesReviewErrors(t *testing.T) {
	var reviews atomic.Int32
	g := NewGuard(KubeReviewer{Client: fakeReviews(&reviews)}, slog.New(slog.DiscardHandler))
	h := g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("state")) }))
	do := getNode
	if code, body := do(h, strings.Repeat("a", 16<<10+1)); code != 401 || reviews.Load() != 0 {
		t.Errorf("a 16 KiB + 1 token: %d %q after %d reviews, want 401 and none", code, body, reviews.Load())
	}
	if code, _ := do(h, "reader"); code != 200 {
		t.Errorf("a valid token after the huge one: %d", code)
	}
	var logs strings.Builder
	bad := NewGuard(errReviewer{}, slog.New(slog.NewTextHandler(&logs, nil))).Wrap(http.NotFoundHandler())
	if code, body := do(bad, "x"); code != 503 || strings.Contains(body, "secret-internal-detail") {
		t.Errorf("a failed token review: %d %q, want 503 without the error", code, body)
	}
	if !strings.Contains(logs.String(), "secret-internal-detail") {
		t.Errorf("the review error is not logged: %q", logs.String())
	}
}

// Invalid tokens are cached apart from valid identities: a flood of
// distinct bad tokens (more than the identity cache holds) does not evict
// a valid token's identity, and a bad token repeated is reviewed once.
func TestGuardNegativeCacheIsSeparate(t *testing.T) {
	var reviews atomic.Int32
	g := NewGuard(KubeReviewer{Client: fakeReviews(&reviews)}, slog.New(slog.DiscardHandler))
	h := g.Wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("state")) }))
	do := func(tok string) int { code, _ := getNode(h, tok); return code }
	if do("reader") != 200 {
		t.Fatal("reader refused")
	}
	for i := range maxCache + 10 {
		if code := do(fmt.Sprintf("bad-%d", i)); code != 401 {
			t.Fatalf("bad token %d: %d", i, code)
		}
	}
	before := reviews.Load()
	if do("reader") != 200 || reviews.Load() != before {
		t.Errorf("the valid identity was evicted by invalid tokens: %d more reviews", reviews.Load()-before)
	}
	do("bad-again")
	before = reviews.Load()
	if do("bad-again") != 401 || reviews.Load() != before {
		t.Errorf("an invalid token repeated: %d more reviews, want it cached", reviews.Load()-before)
	}
}

// getNode GETs nodeapi.NodePath from h with tok in Authorization.
func getNode(h http.Handler, tok string) (int, string) {
	req := httptest.NewRequest("GET", nodeapi.NodePath, nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Body.String()
}
