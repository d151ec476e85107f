// Command coredns is CoreDNS built with only the plugins the local
// cluster's kube-dns needs (kind's Corefile without forward: the cluster
// has no upstream resolver). hack/localcluster builds it into its binary
// cache; the node emulator runs it for the image registry.k8s.io/coredns/coredns.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() {
	// The plugin order stays CoreDNS's own (dnsserver.Directives); the
	// plugins not imported above are simply not available.
	_ = dnsserver.Directives
	coremain.Run()
}
