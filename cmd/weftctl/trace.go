package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/nodeapi"
)

// NodeTrace is one node's walk of a flow.
type NodeTrace struct {
	Node string `json:"node"`
	nodeapi.Trace
}

// TraceRow is the verdict on one flow: the source node's trace (egress)
// and the destination node's (ingress), one when both pods share a node.
type TraceRow struct {
	From    string      `json:"from"`
	To      string      `json:"to"`
	Port    string      `json:"port"`
	Allowed bool        `json:"allowed"`
	Reason  string      `json:"reason,omitempty"`
	Traces  []NodeTrace `json:"traces,omitempty"`
	Error   string      `json:"error,omitempty"`
}

func policyCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "policy", Short: "NetworkPolicy as the nodes programmed it"}
	var from, to, ports string
	trace := &cobra.Command{
		Use:   "trace --from NS/POD --to NS/POD --port 80/tcp",
		Short: "Verdict on a new connection, and the rules on its nodes that gave it",
		Long: "Traces the connection's first packet through the rules weftd programmed on the source pod's node " +
			"(egress) and the destination pod's node (ingress), computed by each weftd from its kernel's rules " +
			"and ipsets. --from, --to and --port take comma-separated lists: every combination is traced.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fetch := func(e *env, ctx context.Context) ([]TraceRow, error) {
				return e.trace(ctx, split(from), split(to), split(ports))
			}
			return show(cmd, g, "traces", fetch, traceTable, func(r TraceRow) bool { return r.Error != "" })
		},
	}
	trace.Flags().StringVar(&from, "from", "", "source pods, NS/POD[,NS/POD...]")
	trace.Flags().StringVar(&to, "to", "", "destination pods, NS/POD[,NS/POD...]")
	trace.Flags().StringVar(&ports, "port", "80/tcp", "PORT/PROTO[,...] (tcp, udp, sctp)")
	cmd.AddCommand(trace)
	return cmd
}

func split(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func traceTable(w *tabwriter.Writer, rows []TraceRow) {
	row(w, "FROM", "TO", "PORT", "VERDICT", "REASON")
	for _, r := range rows {
		v := "deny"
		if r.Allowed {
			v = "allow"
		}
		if r.Error != "" {
			v, r.Reason = "unknown", r.Error
		}
		row(w, r.From, r.To, r.Port, v, r.Reason)
	}
	if len(rows) != 1 {
		return
	}
	for _, t := range rows[0].Traces {
		fmt.Fprintf(w, "\non %s (%s pod there): %s\n", t.Node, t.Local, t.Verdict)
		for _, h := range t.Hits {
			fmt.Fprintf(w, "  %s[%d]\t%s\n", h.Chain, h.Index, h.Rule)
		}
	}
}

// parsePort reads "80/tcp".
func parsePort(s string) (uint16, string, error) {
	p, proto, ok := strings.Cut(s, "/")
	if !ok {
		proto = "tcp"
	}
	n, err := strconv.ParseUint(p, 10, 16)
	if err != nil || n == 0 || proto != "tcp" && proto != "udp" && proto != "sctp" {
		return 0, "", fmt.Errorf("port %q: want PORT/PROTO, e.g. 80/tcp", s)
	}
	return uint16(n), proto, nil
}

// pod resolves NS/POD to a pod with an address.
func (e *env) pod(ctx context.Context, ref string) (*corev1.Pod, error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" {
		return nil, fmt.Errorf("pod %q: want NS/POD", ref)
	}
	p, err := e.client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", ref, err)
	}
	if p.Status.PodIP == "" || p.Spec.NodeName == "" {
		return nil, fmt.Errorf("pod %s has no address yet", ref)
	}
	return p, nil
}

type flowJob struct {
	row      int
	from, to *corev1.Pod
	flow     nodeapi.Flow
}

func (e *env) trace(ctx context.Context, froms, tos, ports []string) ([]TraceRow, error) {
	if len(froms) == 0 || len(tos) == 0 {
		return nil, fmt.Errorf("--from and --to are required")
	}
	resolved := map[string]*corev1.Pod{}
	for _, ref := range append(append([]string{}, froms...), tos...) {
		if _, ok := resolved[ref]; !ok {
			p, err := e.pod(ctx, ref)
			if err != nil {
				return nil, err
			}
			resolved[ref] = p
		}
	}
	var rows []TraceRow
	var jobs []flowJob
	for _, f := range froms {
		for _, t := range tos {
			for _, ps := range ports {
				port, proto, err := parsePort(ps)
				if err != nil {
					return nil, err
				}
				r := TraceRow{From: f, To: t, Port: fmt.Sprintf("%d/%s", port, proto)}
				if f == t {
					r.Allowed, r.Reason = true, "same pod: the packet never leaves it"
				} else {
					jobs = append(jobs, flowJob{row: len(rows), from: resolved[f], to: resolved[t],
						flow: nodeapi.Flow{Src: resolved[f].Status.PodIP, Dst: resolved[t].Status.PodIP, Proto: proto, Port: port}})
				}
				rows = append(rows, r)
			}
		}
	}
	return rows, e.runTraces(ctx, rows, jobs)
}

// runTraces sends each node the flows it is an end of, in one request,
// and fills the rows: allowed when every node that traced allows.
func (e *env) runTraces(ctx context.Context, rows []TraceRow, jobs []flowJob) error {
	byNode := map[string][]int{} // node -> job indexes
	var nodes []string
	for i, j := range jobs {
		for _, n := range uniq(j.from.Spec.NodeName, j.to.Spec.NodeName) {
			if _, ok := byNode[n]; !ok {
				nodes = append(nodes, n)
			}
			byNode[n] = append(byNode[n], i)
		}
	}
	pods, err := e.weftPods(ctx)
	if err != nil {
		return err
	}
	answers := each(ctx, e, nodes, pods, func(ctx context.Context, p corev1.Pod) (nodeapi.TraceAnswer, error) {
		req := nodeapi.TraceRequest{}
		for _, i := range byNode[p.Spec.NodeName] {
			req.Flows = append(req.Flows, jobs[i].flow)
		}
		var a nodeapi.TraceAnswer
		err := e.call(ctx, p, nodeapi.TracePath, req, &a)
		if err == nil && len(a.Traces) != len(req.Flows) {
			err = fmt.Errorf("weftd on %s answered %d traces for %d flows", p.Spec.NodeName, len(a.Traces), len(req.Flows))
		}
		return a, err
	})
	for i := range jobs {
		rows[jobs[i].row].Allowed = true
	}
	for _, a := range answers {
		for k, ji := range byNode[a.node] {
			r := &rows[jobs[ji].row]
			if a.err != nil {
				r.Allowed, r.Error = false, a.err.Error()
				continue
			}
			t := a.val.Traces[k]
			r.Traces = append(r.Traces, NodeTrace{Node: a.node, Trace: t})
			if !t.Allowed {
				r.Allowed = false
				r.Reason = fmt.Sprintf("dropped on %s (%s)", a.node, lastHit(t))
			}
		}
	}
	return nil
}

func uniq(a, b string) []string {
	if a == b {
		return []string{a}
	}
	return []string{a, b}
}

func lastHit(t nodeapi.Trace) string {
	if len(t.Hits) == 0 {
		return t.Local
	}
	h := t.Hits[len(t.Hits)-1]
	if h.Comment != "" {
		return h.Chain + ": " + h.Comment
	}
	return h.Chain
}
