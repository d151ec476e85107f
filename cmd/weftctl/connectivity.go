package main

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/internal/nodeapi"
)

// ProbeRow is one probe of the matrix, run by the source pod's weftd from
// inside the source pod's network namespace.
type ProbeRow struct {
	From    string `json:"from"`
	To      string `json:"to"`
	Port    string `json:"port"`
	Node    string `json:"node"` // where the probe ran
	Allowed bool   `json:"allowed"`
	Reply   string `json:"reply,omitempty"`
	Reason  string `json:"reason,omitempty"`
	Error   string `json:"error,omitempty"`
}

func connectivityCmd(g *globals) *cobra.Command {
	var selector, ports string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "connectivity --namespace NS [--selector k=v] --port 80/tcp",
		Short: "Probe matrix between the chosen pods, each probe run from its source pod on its node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ns := g.overrides.Context.Namespace // kubectl's -n/--namespace
			if ns == "" {
				return fmt.Errorf("--namespace is required")
			}
			fetch := func(e *env, ctx context.Context) ([]ProbeRow, error) {
				return e.connectivity(ctx, ns, selector, split(ports), timeout)
			}
			return show(cmd, g, "probes", fetch, probeTable, func(r ProbeRow) bool { return r.Error != "" })
		},
	}
	cmd.Flags().StringVarP(&selector, "selector", "l", "", "label selector of the pods (default: all in the namespace)")
	cmd.Flags().StringVar(&ports, "port", "80/tcp", "PORT/PROTO[,...] (tcp or udp)")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Second, "per probe")
	return cmd
}

func probeTable(w *tabwriter.Writer, rows []ProbeRow) {
	row(w, "FROM", "TO", "PORT", "RESULT", "DETAIL")
	for _, r := range rows {
		res, detail := "blocked", r.Reason
		if r.Allowed {
			res, detail = "ok", "reply "+r.Reply
		}
		if r.Error != "" {
			res, detail = "unknown", r.Error
		}
		row(w, r.From, r.To, r.Port, res, detail)
	}
}

func (e *env) connectivity(ctx context.Context, ns, selector string, ports []string, timeout time.Duration) ([]ProbeRow, error) {
	l, err := e.client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("list pods: %w", err)
	}
	var sel []corev1.Pod
	for _, p := range l.Items {
		if p.Status.PodIP != "" && !p.Spec.HostNetwork && p.Status.Phase == corev1.PodRunning {
			sel = append(sel, p)
		}
	}
	sort.Slice(sel, func(i, j int) bool { return sel[i].Name < sel[j].Name })
	weft, err := e.weftPods(ctx)
	if err != nil {
		return nil, err
	}
	var rows []ProbeRow
	var reqs []nodeapi.ProbeRequest
	for _, f := range sel {
		for _, t := range sel {
			for _, ps := range ports {
				port, proto, err := parsePort(ps)
				if err != nil || proto == "sctp" {
					return nil, fmt.Errorf("port %q: want PORT/tcp or PORT/udp", ps)
				}
				rows = append(rows, ProbeRow{From: ns + "/" + f.Name, To: ns + "/" + t.Name, Port: ps, Node: f.Spec.NodeName})
				reqs = append(reqs, nodeapi.ProbeRequest{FromNamespace: ns, FromPod: f.Name, To: t.Status.PodIP, Port: port, Proto: proto,
					TimeoutMS: int(timeout / time.Millisecond)})
			}
		}
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 16)
	for i := range rows {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			pod, ok := weft[rows[i].Node]
			if !ok {
				rows[i].Error = "no weft pod on node " + rows[i].Node
				return
			}
			var res nodeapi.ProbeResult
			if err := e.call(ctx, pod, nodeapi.ProbePath, reqs[i], &res); err != nil {
				rows[i].Error = err.Error()
				return
			}
			rows[i].Allowed, rows[i].Reply, rows[i].Reason = res.Allowed, res.Reply, res.Reason
		}()
	}
	wg.Wait()
	return rows, nil
}
