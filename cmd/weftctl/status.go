package main

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"

	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/nodeapi"
)

// NodeRow is one node in weftctl status.
type NodeRow struct {
	Node         string   `json:"node"`
	PodCIDR      string   `json:"podCIDR"`
	Backend      string   `json:"backend"`      // weft.dev/backend: the one in effect
	Decapsulates []string `json:"decapsulates"` // weft.dev/backends
	Migration    string   `json:"migration,omitempty"`
	Reachable    bool     `json:"reachable"`
	Ready        bool     `json:"ready"`
	Reasons      []string `json:"reasons,omitempty"`
	Details      []string `json:"details,omitempty"`
	Error        string   `json:"error,omitempty"`
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Nodes, their pod subnets, backends, readiness and its reasons",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(cmd, g, "nodes", (*env).status, statusTable, func(r NodeRow) bool { return !r.Reachable })
		},
	}
}

func statusTable(w *tabwriter.Writer, rows []NodeRow) {
	row(w, "NODE", "POD CIDR", "BACKEND", "DECAPSULATES", "MIGRATION", "READY", "REASONS")
	for _, r := range rows {
		ready := fmt.Sprint(r.Ready)
		if !r.Reachable {
			ready = "unknown"
		}
		why := strings.Join(r.Reasons, "; ")
		if r.Error != "" {
			why = "weftd not answering: " + r.Error
		}
		row(w, r.Node, r.PodCIDR, r.Backend, strings.Join(r.Decapsulates, ","), r.Migration, ready, why)
	}
}

func (e *env) status(ctx context.Context) ([]NodeRow, error) {
	nodes, pods, err := e.nodesAndPods(ctx)
	if err != nil {
		return nil, err
	}
	answers := get[nodeapi.NodeStatus](ctx, e, names(nodes), pods, nodeapi.NodePath)
	rows := make([]NodeRow, len(nodes))
	for i, n := range nodes {
		rows[i] = nodeRow(n)
		a := answers[i]
		if a.err != nil {
			rows[i].Error = a.err.Error()
			continue
		}
		rows[i].Reachable, rows[i].Ready, rows[i].Reasons, rows[i].Details = true, a.val.Ready, a.val.Reasons, a.val.Details
	}
	return rows, nil
}

// nodeRow reads what the node publishes on its Node object.
func nodeRow(n corev1.Node) NodeRow {
	a := n.Annotations
	r := NodeRow{Node: n.Name, PodCIDR: n.Spec.PodCIDR, Backend: a[backend.AnnoBackend]}
	if r.PodCIDR == "" {
		r.PodCIDR = a[backend.AnnoPodCIDR]
	}
	if s := a[backend.AnnoBackends]; s != "" {
		r.Decapsulates = strings.Split(s, ",")
	}
	var mig []string
	for k, v := range a {
		if strings.HasPrefix(k, backend.AnnoPrefix+"migration") || strings.HasPrefix(k, backend.AnnoPrefix+"switch") {
			mig = append(mig, strings.TrimPrefix(k, backend.AnnoPrefix)+"="+v)
		}
	}
	sort.Strings(mig)
	r.Migration = strings.Join(mig, ",")
	return r
}
