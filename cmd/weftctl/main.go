// Command weftctl operates Weft: what each node's weftd programmed and
// sees, read through the Kubernetes API. It reaches every node's weftd
// through the apiserver's proxy to the weft pods
// (/api/v1/namespaces/kube-system/pods/https:<pod>:9413/proxy/...), never
// an open port, and forwards the kubeconfig user's bearer token so weftd
// can review it (TokenReview, SubjectAccessReview).
//
//	weftctl status                                  nodes, subnets, backends, readiness
//	weftctl ipam [release --node N IP [--yes]]      allocations, leaked addresses
//	weftctl policy trace --from NS/POD --to NS/POD --port 80/tcp
//	weftctl connectivity --namespace NS [--selector k=v] --port 80/tcp
//	weftctl bgp                                     sessions and routes per node
//
// Installed as kubectl-weft it is the kubectl plugin "kubectl weft".
// A node whose weftd does not answer is shown as such and makes the exit
// status 1; the other nodes are still shown.
package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
)

// errPartial: some node did not answer (already shown in the output).
var errPartial = errors.New("some nodes did not answer")

func main() {
	if err := newRoot().Execute(); err != nil {
		if !errors.Is(err, errPartial) {
			fmt.Fprintln(os.Stderr, "error:", err)
		} else {
			fmt.Fprintln(os.Stderr, "weftctl:", err)
		}
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "weftctl",
		Short:         "Operate Weft: node status, IPAM, policy traces, connectivity, BGP",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	g.bind(root)
	root.AddCommand(statusCmd(g), ipamCmd(g), policyCmd(g), connectivityCmd(g), bgpCmd(g))
	return root
}
