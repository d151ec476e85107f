package main

import (
	"context"
	"fmt"
	"log/slog"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/bgp"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/udp"
	"github.com/weftnet/weft/vxlan"
)

// nodeKernel is what the backends of one node are built over.
type nodeKernel struct {
	vxlan *vxlan.Netlink
	// routes is the node's one route writer, shared by every backend so a
	// switch hands each destination over by one replace.
	routes *route.Table
	guard  encapguard.Guard // nil: no iptables (uninstall without it)
	// udpMetrics and status are the udp backend's metrics and readiness
	// details (nil in uninstall).
	udpMetrics *udp.Metrics
	status     udp.Reporter
	// bgp is the process's one bgp factory (it owns the one GoBGP
	// server); without a speaker it can only clean up (uninstall).
	bgp *bgp.Factory
}

// openNodeKernel opens the netlink sockets of the current namespace.
func openNodeKernel(log *slog.Logger) (nodeKernel, func(), error) {
	k, err := vxlan.NewNetlink()
	if err != nil {
		return nodeKernel{}, nil, err
	}
	routes := route.New(route.NewNetlink(k.Handle()), log)
	return nodeKernel{vxlan: k, routes: routes, bgp: &bgp.Factory{Routes: routes, Log: log, IPIP: bgp.HostIPIP{Log: log}}}, k.Close, nil
}

// factories is the one list of the backend types weftd knows: the agent
// runs one of them, uninstall asks each to clean up.
func factories(k nodeKernel, log *slog.Logger) []backend.Factory {
	k.bgp.Guard = k.guard // the process's one bgp factory guards IP-in-IP
	return []backend.Factory{
		vxlan.Factory{Kernel: k.vxlan, Routes: k.routes, Guard: k.guard, Log: log},
		udp.Factory{Kernel: udp.Netlink{Log: log}, Routes: k.routes, Guard: k.guard, Metrics: k.udpMetrics, Status: k.status, Log: log},
		k.bgp,
	}
}

// secretKeys reads TCP-MD5 passwords for the bgp backend from Secrets in
// kube-system (the manifest grants get on the named Secret only).
type secretKeys struct{ c kubernetes.Interface }

func (s secretKeys) SecretKey(ctx context.Context, name, key string) (string, error) {
	sec, err := s.c.CoreV1().Secrets("kube-system").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", err
	}
	v, ok := sec.Data[key]
	if !ok {
		return "", fmt.Errorf("secret kube-system/%s has no key %q", name, key)
	}
	return string(v), nil
}
