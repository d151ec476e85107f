package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// show connects, fetches the rows and writes them under key (JSON, YAML)
// or as a table; errPartial when a row says a node failed.
func show[T any](cmd *cobra.Command, g *globals, key string, fetch func(*env, context.Context) ([]T, error),
	table func(*tabwriter.Writer, []T), failed func(T) bool) error {
	e, err := g.connect()
	if err != nil {
		return err
	}
	rows, err := fetch(e, cmd.Context())
	if err != nil {
		return err
	}
	werr := emit(os.Stdout, g.output, map[string]any{key: rows}, func(w *tabwriter.Writer) { table(w, rows) })
	return partial(werr, rows, failed)
}

// partial returns errPartial when some row failed (after a good write).
func partial[T any](werr error, rows []T, failed func(T) bool) error {
	if werr != nil {
		return werr
	}
	for _, r := range rows {
		if failed(r) {
			return errPartial
		}
	}
	return nil
}

// emit writes v as JSON or YAML, or calls table for -o table.
func emit(w io.Writer, format string, v any, table func(*tabwriter.Writer)) error {
	switch format {
	case "json":
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(w, string(b))
		return err
	case "yaml":
		b, err := yaml.Marshal(v)
		if err != nil {
			return err
		}
		_, err = w.Write(b)
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	table(tw)
	return tw.Flush()
}

// row writes tab-separated cells; empty cells show as "-".
func row(w io.Writer, cells ...string) {
	for i, c := range cells {
		if c == "" {
			cells[i] = "-"
		}
	}
	fmt.Fprintln(w, strings.Join(cells, "\t"))
}

// errString is "" for nil.
func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
