package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/nodeapi"
)

// AddrRow is one allocation in weftctl ipam. Leaked: allocated, but no pod
// exists for it (the recorded pod's UID is gone, or, without a record, no
// pod on the node has the address) and no CNI ADD of its container is
// still running (Adding: weftd saw the ADD's lock held).
type AddrRow struct {
	Node string `json:"node"`
	nodeapi.Allocation
	Leaked bool `json:"leaked"`
}

// NodeIPAM is one node's part of weftctl ipam.
type NodeIPAM struct {
	Node        string    `json:"node"`
	Reachable   bool      `json:"reachable"`
	Error       string    `json:"error,omitempty"`
	Allocations []AddrRow `json:"allocations"`
	Leaked      int       `json:"leaked"`
}

func ipamCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ipam",
		Short: "Addresses allocated on each node, the pod holding each, and leaked ones",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(cmd, g, "nodes", (*env).ipam, ipamTable, func(n NodeIPAM) bool { return !n.Reachable })
		},
	}
	cmd.AddCommand(releaseCmd(g))
	return cmd
}

func ipamTable(w *tabwriter.Writer, res []NodeIPAM) {
	row(w, "NODE", "ADDRESS", "POD", "CONTAINER", "STATE")
	for _, n := range res {
		if !n.Reachable {
			row(w, n.Node, "", "", "", "weftd not answering: "+n.Error)
		}
		for _, a := range n.Allocations {
			pod, state := "", "in use"
			if a.PodName != "" {
				pod = a.PodNamespace + "/" + a.PodName
			}
			switch {
			case a.Leaked:
				state = "leaked"
			case a.Adding:
				state = "adding"
			}
			row(w, n.Node, a.IP, pod, shortID(a.ContainerID), state)
		}
	}
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (e *env) ipam(ctx context.Context) ([]NodeIPAM, error) {
	nodes, pods, err := e.nodesAndPods(ctx)
	if err != nil {
		return nil, err
	}
	answers := get[nodeapi.IPAM](ctx, e, names(nodes), pods, nodeapi.IPAMPath)
	// Pods listed after the nodes answered: every pod whose ADD a node saw
	// was created before it, so a fresh allocation is never taken for a leak.
	all, err := e.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	out := make([]NodeIPAM, len(answers))
	for i, a := range answers {
		out[i] = NodeIPAM{Node: a.node, Reachable: a.err == nil, Error: errString(a.err), Allocations: []AddrRow{}}
		for _, al := range a.val.Allocations {
			r := AddrRow{Node: a.node, Allocation: al, Leaked: leaked(al, a.node, all.Items)}
			if r.Leaked {
				out[i].Leaked++
			}
			out[i].Allocations = append(out[i].Allocations, r)
		}
	}
	return out, nil
}

// leaked: no ADD is running for the allocation and no pod of the API is
// its. With a record, the pod with the recorded UID must exist (a record
// without a UID: the recorded pod on the node); without one, a pod on the
// node must have the address.
func leaked(a nodeapi.Allocation, node string, pods []corev1.Pod) bool {
	if a.Adding {
		return false
	}
	for _, p := range pods {
		if a.PodUID != "" && string(p.UID) == a.PodUID {
			return false
		}
		if a.PodUID == "" && a.PodName != "" && p.Namespace == a.PodNamespace && p.Name == a.PodName && p.Spec.NodeName == node {
			return false
		}
		if a.PodUID == "" && p.Spec.NodeName == node && !p.Spec.HostNetwork {
			for _, ip := range p.Status.PodIPs {
				if ip.IP == a.IP {
					return false
				}
			}
		}
	}
	return true
}

func releaseCmd(g *globals) *cobra.Command {
	var node string
	var yes, force bool
	cmd := &cobra.Command{
		Use:   "release IP --node NODE",
		Short: "Free a leaked address on a node (asks first; --yes to skip)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if node == "" {
				return fmt.Errorf("--node is required")
			}
			e, err := g.connect()
			if err != nil {
				return err
			}
			return e.release(cmd.Context(), node, args[0], yes, force, os.Stdin, os.Stdout)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "the node holding the address")
	cmd.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	cmd.Flags().BoolVar(&force, "force", false, "release even if a pod still holds the address (weftd still refuses if the recorded pod exists)")
	return cmd
}

func (e *env) release(ctx context.Context, node, ip string, yes, force bool, in io.Reader, out io.Writer) error {
	res, err := e.ipam(ctx)
	if err != nil {
		return err
	}
	var found *AddrRow
	for _, n := range res {
		if n.Node != node {
			continue
		}
		if !n.Reachable {
			return fmt.Errorf("node %s: weftd not answering: %s", node, n.Error)
		}
		for i := range n.Allocations {
			if n.Allocations[i].IP == ip {
				found = &n.Allocations[i]
			}
		}
	}
	if found == nil {
		return fmt.Errorf("%s is not allocated on node %s", ip, node)
	}
	if found.Adding && !force {
		return fmt.Errorf("%s on %s: container %s is still being added (CNI ADD in progress): not leaked", ip, node, shortID(found.ContainerID))
	}
	if !found.Leaked && !force {
		return fmt.Errorf("%s on %s is in use by %s/%s: not leaked (use --force to release anyway)", ip, node, found.PodNamespace, found.PodName)
	}
	if !yes {
		fmt.Fprintf(out, "Release %s on node %s, held by container %s (no pod)? [y/N] ", ip, node, shortID(found.ContainerID))
		line, _ := bufio.NewReader(in).ReadString('\n')
		if a := strings.ToLower(strings.TrimSpace(line)); a != "y" && a != "yes" {
			return fmt.Errorf("not released")
		}
	}
	pods, err := e.weftPods(ctx)
	if err != nil {
		return err
	}
	pod, ok := pods[node]
	if !ok {
		return fmt.Errorf("no weft pod on node %s", node)
	}
	var rr nodeapi.ReleaseResult
	if err := e.call(ctx, pod, nodeapi.ReleasePath, nodeapi.ReleaseRequest{IP: ip, ContainerID: found.ContainerID}, &rr); err != nil {
		return err
	}
	if rr.Released == 0 {
		return fmt.Errorf("%s was no longer held by container %s on %s: nothing released", ip, shortID(found.ContainerID), node)
	}
	fmt.Fprintf(out, "released %s on %s\n", ip, node)
	return nil
}
