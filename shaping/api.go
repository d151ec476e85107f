package shaping

import (
	"errors"
	"net/http"
	"strings"

	"github.com/weftnet/weft/internal/endpoint"
)

// Handler serves the plugin's shaping calls on weftd's local socket:
// ShapingAppliedPath (ADD: apply the record's request, 422 naming the
// annotation when it is invalid) and ShapingReleasedPath (DEL: converge
// without it). mark, when set, is called on release instead of a sync
// (weftd's loop).
func (r *Reconciler) Handler(mark func()) map[string]http.Handler {
	return map[string]http.Handler{
		endpoint.ShapingAppliedPath: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			veth := strings.TrimPrefix(req.URL.Path, endpoint.ShapingAppliedPath)
			err := r.Admit(req.Context(), veth)
			var inv *InvalidError
			switch {
			case errors.As(err, &inv):
				http.Error(w, err.Error(), http.StatusUnprocessableEntity)
			case err != nil:
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
		}),
		endpoint.ShapingReleasedPath: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
			if err := r.Release(strings.TrimPrefix(req.URL.Path, endpoint.ShapingReleasedPath)); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			if mark != nil {
				mark()
				return
			}
			if err := r.Sync(req.Context(), false); err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
			}
		}),
	}
}
