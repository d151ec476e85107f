package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/weftnet/weft/internal/nodeapi"
)

// NodeBGP is one node's part of weftctl bgp.
type NodeBGP struct {
	nodeapi.BGP
	Reachable bool   `json:"reachable"`
	Error     string `json:"error,omitempty"`
}

func bgpCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "bgp",
		Short: "BGP sessions and the routes each node installed from them (bgp backend)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return show(cmd, g, "nodes", (*env).bgp, bgpTable, func(r NodeBGP) bool { return !r.Reachable })
		},
	}
}

func (e *env) bgp(ctx context.Context) ([]NodeBGP, error) {
	nodes, pods, err := e.nodesAndPods(ctx)
	if err != nil {
		return nil, err
	}
	var rows []NodeBGP
	for _, a := range get[nodeapi.BGP](ctx, e, names(nodes), pods, nodeapi.BGPPath) {
		a.val.Node = a.node
		rows = append(rows, NodeBGP{BGP: a.val, Reachable: a.err == nil, Error: errString(a.err)})
	}
	return rows, nil
}

func bgpTable(w *tabwriter.Writer, rows []NodeBGP) {
	row(w, "NODE", "PEER/PREFIX", "ASN", "STATE")
	for _, r := range rows {
		switch {
		case !r.Reachable:
			row(w, r.Node, "", "", "weftd not answering: "+r.Error)
		case !r.Running:
			row(w, r.Node, "", "", "bgp backend not running")
		}
		for _, s := range r.Sessions {
			row(w, r.Node, s.Peer, fmt.Sprint(s.ASN), s.State)
		}
		for _, rt := range r.Routes {
			row(w, r.Node, rt.Prefix, "", "route installed")
		}
	}
}
