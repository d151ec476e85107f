package podnet

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
)

// StatusTimeout bounds STATUS's question to weftd. Runtimes call STATUS
// often; a weftd that cannot answer its local socket within a second cannot
// program new pods either.
const StatusTimeout = time.Second

// policyStatus is STATUS's policy part: when the config names weftd's
// policy socket, every ADD waits on weftd there, so a weftd that does not
// answer (or answers that it cannot program pods) makes the plugin "not
// available" (code 50), and a runtime that calls STATUS stops sending pods
// to a node that cannot police them.
func policyStatus(ctx context.Context, conf *NetConf) error {
	if conf.PolicySocket == "" {
		return nil
	}
	if err := endpoint.Status(ctx, conf.PolicySocket, StatusTimeout); err != nil {
		return types.NewError(types.ErrPluginNotAvailable, "network policy: "+err.Error(), "")
	}
	return nil
}
