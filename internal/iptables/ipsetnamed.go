package iptables

import (
	"context"
	"fmt"
	"strings"
)

// IPSetSaveNamed returns `ipset save` of the named sets only; sets that do
// not exist are left out.
func (r Runner) IPSetSaveNamed(ctx context.Context, names ...string) (string, error) {
	var b strings.Builder
	for _, n := range names {
		out, err := r.run(ctx, "", "ipset", "save", n)
		if err != nil {
			if strings.Contains(err.Error(), "does not exist") {
				continue
			}
			return "", fmt.Errorf("ipset save %s: %w", n, err)
		}
		b.WriteString(out)
	}
	return b.String(), nil
}
