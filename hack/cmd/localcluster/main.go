// Command localcluster runs Weft's local multi-node Kubernetes cluster:
//
//	localcluster up [--nodes N] [--cni auto|static|manifest] [--proxy-mode iptables|nftables]
//	localcluster down
//	localcluster status
//	localcluster exec NAMESPACE/POD -- CMD...
//	localcluster probe --from NS/POD --to NS/POD --port 80 --proto tcp|udp [--timeout 1s] [-v]
//
// It is normally run through hack/localcluster, which builds the binaries
// into the cache directory first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/weftnet/weft/hack/cluster"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "localcluster:", err)
		os.Exit(1)
	}
}

const usage = `usage: localcluster [--root DIR] [--bin DIR] [-v] up|down|status|exec|probe|kubeconfig ...
  up [--nodes N] [--cni auto|static|manifest] [--proxy-mode iptables|nftables]   (NODES env sets the default)
  down
  status
  exec NAMESPACE/POD -- CMD...
  probe --from NS/POD (--to NS/POD --port N | --addr HOST:PORT) --proto tcp|udp [--timeout 1s] [-v]
  kubeconfig                                   print the admin kubeconfig path`

func run(args []string) error {
	g := flag.NewFlagSet("localcluster", flag.ContinueOnError)
	root := g.String("root", "", "repository root (default: current directory)")
	bin := g.String("bin", "", "binary cache dir (default <root>/.localcluster/bin)")
	verbose := g.Bool("v", false, "debug logging")
	g.Usage = func() { fmt.Fprintln(os.Stderr, usage) }
	if err := g.Parse(args); err != nil {
		return err
	}
	if g.NArg() == 0 {
		g.Usage()
		return errors.New("missing command")
	}
	if *root == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		*root = wd
	}
	lvl := slog.LevelInfo
	if *verbose {
		lvl = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cmd, rest := g.Arg(0), g.Args()[1:]
	opt := cluster.Options{Root: *root, BinDir: *bin, Log: log}
	switch cmd {
	case "up":
		fs := flag.NewFlagSet("up", flag.ContinueOnError)
		def := 3
		if v := os.Getenv("NODES"); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				return fmt.Errorf("NODES=%q: %w", v, err)
			}
			def = n
		}
		nodes := fs.Int("nodes", def, "number of nodes")
		cni := fs.String("cni", "auto", "auto (manifests/weft.yaml if present), static or manifest")
		proxyMode := fs.String("proxy-mode", cluster.ProxyIPTables, "kube-proxy mode: iptables or nftables (a running cluster switches in place)")
		image := fs.String("image", "", "run the DaemonSet's containers inside this `docker save` archive of Weft's image (make image: bin/weft-image.tar) instead of from the built binaries")
		if err := fs.Parse(rest); err != nil {
			return err
		}
		opt.Nodes, opt.CNI, opt.ProxyMode = *nodes, *cni, *proxyMode
		if *image != "" {
			abs, err := filepath.Abs(*image)
			if err != nil {
				return err
			}
			opt.Image = abs
		}
		c, err := cluster.New(opt)
		if err != nil {
			return err
		}
		return c.Up(ctx)
	case "down":
		c, err := cluster.New(opt)
		if err != nil {
			return err
		}
		return c.Down(context.WithoutCancel(ctx))
	case "status":
		c, err := cluster.New(opt)
		if err != nil {
			return err
		}
		return c.Status(ctx, os.Stdout)
	case "kubeconfig":
		c, err := cluster.New(opt)
		if err != nil {
			return err
		}
		fmt.Println(c.Kubeconfig())
		return nil
	case "exec":
		if len(rest) < 3 || rest[1] != "--" {
			return errors.New("usage: exec NAMESPACE/POD -- CMD...")
		}
		c, err := cluster.New(opt)
		if err != nil {
			return err
		}
		return c.Exec(ctx, rest[0], rest[2:])
	case "probe":
		fs := flag.NewFlagSet("probe", flag.ContinueOnError)
		from := fs.String("from", "", "source pod NAMESPACE/NAME")
		to := fs.String("to", "", "target pod NAMESPACE/NAME")
		addr := fs.String("addr", "", "target address HOST:PORT instead of a pod (a ClusterIP, a NodePort)")
		port := fs.Int("port", 80, "target port")
		proto := fs.String("proto", "tcp", "tcp or udp")
		timeout := fs.Duration("timeout", time.Second, "how long to wait for an answer")
		pv := fs.Bool("v", false, "print who answered (or why not) on stderr")
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if *from == "" || (*to == "") == (*addr == "") {
			return errors.New("probe: --from and one of --to or --addr are required")
		}
		c, err := cluster.New(opt)
		if err != nil {
			return err
		}
		var res *cluster.ProbeResult
		if *addr != "" {
			res, err = c.ProbeAddr(ctx, *from, *addr, *proto, *timeout)
		} else {
			res, err = c.Probe(ctx, *from, *to, *port, *proto, *timeout)
		}
		if err != nil {
			return err
		}
		if res.Allowed {
			fmt.Println("allowed")
			if *pv || *verbose {
				fmt.Fprintf(os.Stderr, "%s/%s answered by %s\n", res.Target, *proto, res.Answerer)
			}
		} else {
			fmt.Println("denied")
			if *pv || *verbose {
				fmt.Fprintf(os.Stderr, "%s/%s: %s\n", res.Target, *proto, res.Reason)
			}
		}
		return nil
	default:
		g.Usage()
		return fmt.Errorf("unknown command %q", cmd)
	}
}
