package api

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	authzv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/nodeapi"
)

// Reviewer asks the Kubernetes API who a bearer token belongs to
// (TokenReview) and whether that user may make a request (SubjectAccessReview).
type Reviewer interface {
	Authenticate(ctx context.Context, token string) (authnv1.UserInfo, bool, error)
	Authorize(ctx context.Context, u authnv1.UserInfo, path, verb string) (bool, string, error)
}

// KubeReviewer is the Reviewer of a client-go clientset; weftd's
// ServiceAccount needs create on tokenreviews and subjectaccessreviews.
type KubeReviewer struct {
	Client kubernetes.Interface
	// Audience a token must be bound to (nodeapi.Audience when empty).
	Audience string
}

// Authenticate implements Reviewer: the review asks for the token bound to
// weftd's audience only, and a token is valid only when the answer says it
// is bound to it (an apiserver token, meant for the apiserver, is not).
func (k KubeReviewer) Authenticate(ctx context.Context, token string) (authnv1.UserInfo, bool, error) {
	aud := k.Audience
	if aud == "" {
		aud = nodeapi.Audience
	}
	tr, err := k.Client.AuthenticationV1().TokenReviews().Create(ctx,
		&authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{aud}}}, metav1.CreateOptions{})
	if err != nil {
		return authnv1.UserInfo{}, false, fmt.Errorf("token review: %w", err)
	}
	if !tr.Status.Authenticated || !slices.Contains(tr.Status.Audiences, aud) {
		return authnv1.UserInfo{}, false, nil
	}
	return tr.Status.User, true, nil
}

// Authorize implements Reviewer with a non-resource URL (path) and verb.
func (k KubeReviewer) Authorize(ctx context.Context, u authnv1.UserInfo, path, verb string) (bool, string, error) {
	extra := map[string]authzv1.ExtraValue{}
	for k, v := range u.Extra {
		extra[k] = authzv1.ExtraValue(v)
	}
	sar := &authzv1.SubjectAccessReview{Spec: authzv1.SubjectAccessReviewSpec{
		User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
		NonResourceAttributes: &authzv1.NonResourceAttributes{Path: path, Verb: verb}}}
	res, err := k.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, sar, metav1.CreateOptions{})
	if err != nil {
		return false, "", fmt.Errorf("subject access review: %w", err)
	}
	return res.Status.Allowed && !res.Status.Denied, res.Status.Reason, nil
}

// Guard authenticates and authorizes every request of the operational API
// through a Reviewer, as kubelet does: the bearer token (Authorization, or
// nodeapi.TokenHeader through the apiserver's proxy) is reviewed (by
// KubeReviewer for nodeapi.Audience only: an apiserver token is invalid
// here), then the user must be allowed the request's path as a non-resource URL with the
// lower-case method as verb ("get", "post"). No token or an invalid one:
// 401; not allowed: 403; the API unreachable: 503 (never an allow).
// A token longer than maxTokenLen is refused (401) without a review.
// Answers are cached: identities for AuthnTTL, allows for AllowTTL,
// denials and invalid tokens for DenyTTL (kubelet's defaults are 2m, 5m,
// 30s); invalid tokens in a small cache of their own, so that a flood of
// them cannot evict the identities of valid ones. Failure answers are
// generic; the reason is logged.
type Guard struct {
	Reviewer                    Reviewer
	AuthnTTL, AllowTTL, DenyTTL time.Duration
	Log                         *slog.Logger
	mu                          sync.Mutex
	users                       map[string]cachedUser
	invalid                     map[string]time.Time // token hash -> expiry
	verdicts                    map[string]cachedVerdict
}

type cachedUser struct {
	u   authnv1.UserInfo
	exp time.Time
}

// maxTokenLen bounds a bearer token (a ServiceAccount token is ~1 KiB).
const maxTokenLen = 16 << 10

// maxInvalid bounds the cache of invalid tokens; when full it is emptied.
const maxInvalid = 256

type cachedVerdict struct {
	ok     bool
	reason string
	exp    time.Time
}

// maxCache bounds each cache; when full it is emptied.
const maxCache = 4096

// NewGuard returns a Guard with kubelet-like cache lifetimes (shorter allows).
func NewGuard(r Reviewer, log *slog.Logger) *Guard {
	return &Guard{Reviewer: r, AuthnTTL: 2 * time.Minute, AllowTTL: time.Minute, DenyTTL: 10 * time.Second, Log: log}
}

// bearer returns the request's bearer token, "" if none.
func bearer(r *http.Request) string {
	for _, h := range []string{"Authorization", nodeapi.TokenHeader} {
		if t, ok := strings.CutPrefix(r.Header.Get(h), "Bearer "); ok && strings.TrimSpace(t) != "" {
			return strings.TrimSpace(t)
		}
	}
	return ""
}

// Wrap returns h behind the guard.
func (g *Guard) Wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tok := bearer(r)
		if tok == "" {
			w.Header().Set("WWW-Authenticate", `Bearer realm="weftd"`)
			http.Error(w, "Unauthorized: a bearer token is required (Authorization or "+nodeapi.TokenHeader+")", http.StatusUnauthorized)
			return
		}
		if len(tok) > maxTokenLen {
			http.Error(w, "Unauthorized: the token is not valid", http.StatusUnauthorized)
			return
		}
		u, ok, err := g.user(r.Context(), tok)
		if err != nil {
			g.Log.Warn("operational API: token review failed", "err", err)
			http.Error(w, "Service Unavailable: cannot review the token now", http.StatusServiceUnavailable)
			return
		}
		if !ok {
			http.Error(w, "Unauthorized: the token is not valid", http.StatusUnauthorized)
			return
		}
		verb := strings.ToLower(r.Method)
		allowed, reason, err := g.verdict(r.Context(), u, r.URL.Path, verb)
		if err != nil {
			g.Log.Warn("operational API: access review failed", "user", u.Username, "err", err)
			http.Error(w, "Service Unavailable: cannot review access now", http.StatusServiceUnavailable)
			return
		}
		if !allowed {
			msg := fmt.Sprintf("Forbidden: user %q may not %s %s on weftd", u.Username, verb, r.URL.Path)
			if reason != "" {
				msg += ": " + reason
			}
			http.Error(w, msg, http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	})
}

func (g *Guard) user(ctx context.Context, tok string) (authnv1.UserInfo, bool, error) {
	sum := sha256.Sum256([]byte(tok))
	key := hex.EncodeToString(sum[:])
	now := time.Now()
	g.mu.Lock()
	c, hit := g.users[key]
	bad, badHit := g.invalid[key]
	g.mu.Unlock()
	if hit && now.Before(c.exp) {
		return c.u, true, nil
	}
	if badHit && now.Before(bad) {
		return authnv1.UserInfo{}, false, nil
	}
	u, ok, err := g.Reviewer.Authenticate(ctx, tok)
	if err != nil {
		return u, false, err
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if !ok {
		if g.invalid == nil || len(g.invalid) >= maxInvalid {
			g.invalid = map[string]time.Time{}
		}
		g.invalid[key] = time.Now().Add(g.DenyTTL)
		return u, false, nil
	}
	if g.users == nil || len(g.users) >= maxCache {
		g.users = map[string]cachedUser{}
	}
	g.users[key] = cachedUser{u: u, exp: time.Now().Add(g.AuthnTTL)}
	return u, true, nil
}

// verdictKey names a verdict by everything the access review is asked:
// the whole identity (name, UID, groups, extra; the authorizer may use any
// of them) and the request, JSON-encoded so that no two differ only in how
// they print, hashed to bound the key's size.
func verdictKey(u authnv1.UserInfo, path, verb string) string {
	b, _ := json.Marshal(struct {
		U          authnv1.UserInfo
		Path, Verb string
	}{u, path, verb}) // maps marshal with sorted keys
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func (g *Guard) verdict(ctx context.Context, u authnv1.UserInfo, path, verb string) (bool, string, error) {
	key := verdictKey(u, path, verb)
	g.mu.Lock()
	c, hit := g.verdicts[key]
	g.mu.Unlock()
	if hit && time.Now().Before(c.exp) {
		return c.ok, c.reason, nil
	}
	ok, reason, err := g.Reviewer.Authorize(ctx, u, path, verb)
	if err != nil {
		return false, "", err
	}
	ttl := g.DenyTTL
	if ok {
		ttl = g.AllowTTL
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.verdicts == nil || len(g.verdicts) >= maxCache {
		g.verdicts = map[string]cachedVerdict{}
	}
	g.verdicts[key] = cachedVerdict{ok: ok, reason: reason, exp: time.Now().Add(ttl)}
	return ok, reason, nil
}
