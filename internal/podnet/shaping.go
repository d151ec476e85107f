package podnet

import (
	"context"
	"errors"
	"strconv"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/endpoint/record"
)

// The pod bandwidth annotations, as the runtime passes them in the
// io.kubernetes.cri.pod-annotations capability.
const (
	annIngressBandwidth = "kubernetes.io/ingress-bandwidth"
	annEgressBandwidth  = "kubernetes.io/egress-bandwidth"
)

// runtimeConfig holds the capability arguments weft declares when weftd
// shapes (libcni passes only declared ones).
type runtimeConfig struct {
	Bandwidth      *bandwidthCap     `json:"bandwidth"`
	PodAnnotations map[string]string `json:"io.kubernetes.cri.pod-annotations"`
}

// bandwidthCap is the bandwidth capability: rates in bits/s, bursts in
// bits (containerd sends 4294967295 when the pod names none).
type bandwidthCap struct {
	IngressRate  uint64 `json:"ingressRate"`
	IngressBurst uint64 `json:"ingressBurst"`
	EgressRate   uint64 `json:"egressRate"`
	EgressBurst  uint64 `json:"egressBurst"`
}

// bandwidthRequest is what the record carries for weftd's shaper: the
// annotations' own values (so weftd's errors quote what the user wrote),
// else the capability's rates; nil when weftd does not shape or the pod
// asks for nothing. weftd validates it.
func (c *NetConf) bandwidthRequest() *record.Bandwidth {
	if c.ShapingSocket == "" {
		return nil
	}
	rc := c.RuntimeConfig
	bw := &record.Bandwidth{Ingress: rc.PodAnnotations[annIngressBandwidth], Egress: rc.PodAnnotations[annEgressBandwidth]}
	if cp := rc.Bandwidth; cp != nil {
		if bw.Ingress == "" && cp.IngressRate > 0 {
			bw.Ingress = strconv.FormatUint(cp.IngressRate, 10)
		}
		if bw.Egress == "" && cp.EgressRate > 0 {
			bw.Egress = strconv.FormatUint(cp.EgressRate, 10)
		}
		bw.IngressBurst, bw.EgressBurst = cp.IngressBurst, cp.EgressBurst
	}
	if bw.Ingress == "" && bw.Egress == "" {
		return nil
	}
	return bw
}

// shapingTimeout bounds weftd's answer to the shaping calls.
const shapingTimeout = 10 * time.Second

// waitShaping returns once weftd has the attachment's classes in place.
// A request weftd refuses (unparsable, zero, negative, above the node
// ceiling) fails ADD with weftd's message, which names the annotation; a
// weftd that does not answer fails it with "try again later".
func waitShaping(ctx context.Context, conf *NetConf, hostName string) error {
	if conf.ShapingSocket == "" {
		return nil
	}
	err := endpoint.WaitShaped(ctx, conf.ShapingSocket, hostName, shapingTimeout)
	var rej *endpoint.RejectedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &rej):
		return types.NewError(types.ErrInvalidNetworkConfig, "pod bandwidth: "+rej.Reason, "")
	}
	return types.NewError(types.ErrTryAgainLater, "waiting for weftd to shape the pod: "+err.Error(), "")
}

// waitWeftd waits for weftd's policy and shaping of the attachment at
// once (two requests on its socket, served in parallel): ADD then costs
// the longer of the two waits, not their sum. A policy error wins.
func waitWeftd(ctx context.Context, conf *NetConf, hostName string) error {
	if conf.ShapingSocket == "" {
		return waitPolicy(ctx, conf, hostName)
	}
	shaped := make(chan error, 1)
	go func() { shaped <- waitShaping(ctx, conf, hostName) }()
	perr := waitPolicy(ctx, conf, hostName)
	serr := <-shaped
	if perr != nil {
		return perr
	}
	return serr
}

// releaseShaping tells weftd the attachment is gone; DEL never fails for
// it (weftd's resync removes the classes of records that are gone).
func releaseShaping(ctx context.Context, conf *NetConf, hostName string) {
	if conf.ShapingSocket == "" {
		return
	}
	_ = endpoint.ReleaseShaping(ctx, conf.ShapingSocket, hostName, 2*time.Second)
}
