package endpoint

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"time"
)

// ReportPath is where the plugin tells weftd how long a CNI request took
// and how it ended (weftd's weft_cni_* metrics): POST CNIReport.
const ReportPath = "/v1/cni/report"

// CNIReport is one finished CNI request of the plugin.
type CNIReport struct {
	Op      string  `json:"op"` // ADD, DEL
	Seconds float64 `json:"seconds"`
	Code    uint    `json:"code"` // 0 = success, else the CNI error code
}

// Report sends r to weftd, waiting at most timeout: best effort, a weftd
// that does not answer costs the request no more than that.
func Report(ctx context.Context, socket string, r CNIReport, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	a, err := call(ctx, socket, http.MethodPost, ReportPath, b)
	if err != nil {
		return fmt.Errorf("report to weftd: %w", err)
	}
	if a.Code != http.StatusNoContent {
		return fmt.Errorf("report to weftd: %s", a.Status)
	}
	return nil
}
