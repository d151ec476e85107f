package podnet

import (
	"context"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/weftnet/weft/internal/cniargs"
	"github.com/weftnet/weft/internal/endpoint"
)

// podIdentity is what the runtime tells about the pod in CNI_ARGS.
type podIdentity struct {
	Namespace, Name, UID string
}

// parsePodArgs reads the K8S_POD_* keys of CNI_ARGS, ignoring every other
// key: runtimes pass IgnoreUnknown=1 and more keys than weft uses, and
// rejecting them would break pods.
func parsePodArgs(s string) podIdentity {
	return podIdentity{
		Namespace: cniargs.Last(s, "K8S_POD_NAMESPACE"),
		Name:      cniargs.Last(s, "K8S_POD_NAME"),
		UID:       cniargs.Last(s, "K8S_POD_UID"),
	}
}

// recordEndpoint writes the attachment's record for weftd's policy
// controller when the config names an endpoint directory (weftd's conflist
// does). Without pod identity there is nothing to police by, so ADD fails
// rather than start a pod the policy engine cannot see.
func recordEndpoint(conf *NetConf, args *skel.CmdArgs, hostName string, res *current.Result) error {
	if conf.EndpointDir == "" {
		return nil
	}
	id := parsePodArgs(args.Args)
	if id.Namespace == "" || id.Name == "" {
		return types.NewError(types.ErrInvalidEnvironmentVariables,
			"CNI_ARGS: K8S_POD_NAMESPACE and K8S_POD_NAME are required when endpointDir is set", "")
	}
	ep := endpoint.Endpoint{
		ContainerID:  args.ContainerID,
		IfName:       args.IfName,
		PodNamespace: id.Namespace,
		PodName:      id.Name,
		PodUID:       id.UID,
		HostVeth:     hostName,
		Network:      conf.Name,
		Netns:        args.Netns,
		Bandwidth:    conf.bandwidthRequest(),
	}
	for _, ip := range res.IPs {
		ep.IPs = append(ep.IPs, ip.Address.String())
	}
	if err := endpoint.Write(conf.EndpointDir, ep); err != nil {
		return cniErr(types.ErrIOFailure, err, "endpointDir")
	}
	return nil
}

// DefaultPolicyTimeout bounds the wait for weftd to program a new pod.
const DefaultPolicyTimeout = 10 * time.Second

// waitPolicy returns once weftd reports the attachment's policy rules in
// place. A weftd that does not answer in time fails the ADD with "try again
// later": the runtime retries, and the pod never runs unpoliced.
func waitPolicy(ctx context.Context, conf *NetConf, hostName string) error {
	if conf.PolicySocket == "" {
		return nil
	}
	timeout := DefaultPolicyTimeout
	if conf.PolicyTimeout != "" {
		timeout, _ = time.ParseDuration(conf.PolicyTimeout) // validated in LoadConf
	}
	if err := endpoint.WaitProgrammed(ctx, conf.PolicySocket, hostName, timeout); err != nil {
		return types.NewError(types.ErrTryAgainLater, "waiting for weftd to program network policy: "+err.Error(), "")
	}
	return nil
}

// forgetEndpoint removes the attachment's record; a missing one is fine.
func forgetEndpoint(conf *NetConf, hostName string) error {
	if conf.EndpointDir == "" {
		return nil
	}
	return endpoint.Remove(conf.EndpointDir, hostName)
}
