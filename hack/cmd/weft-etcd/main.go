// Command weft-etcd runs a single-member etcd in-process (go.etcd.io/etcd/server/v3/embed)
// for the local cluster's kube-apiserver. It listens only on the address it is given.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/signal"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "weft-etcd:", err)
		os.Exit(1)
	}
}

func run() error {
	dataDir := flag.String("data-dir", "", "etcd data directory (required)")
	listen := flag.String("listen", "http://127.0.0.1:2379", "client URL to listen on")
	peer := flag.String("peer", "http://127.0.0.1:2380", "peer URL to listen on")
	flag.Parse()
	if *dataDir == "" {
		return fmt.Errorf("--data-dir is required")
	}
	clientURL, err := url.Parse(*listen)
	if err != nil {
		return fmt.Errorf("parse --listen: %w", err)
	}
	peerURL, err := url.Parse(*peer)
	if err != nil {
		return fmt.Errorf("parse --peer: %w", err)
	}

	cfg := embed.NewConfig()
	cfg.Name = "weft-etcd"
	cfg.Dir = *dataDir
	cfg.ListenClientUrls = []url.URL{*clientURL}
	cfg.AdvertiseClientUrls = []url.URL{*clientURL}
	cfg.ListenPeerUrls = []url.URL{*peerURL}
	cfg.AdvertisePeerUrls = []url.URL{*peerURL}
	cfg.InitialCluster = cfg.Name + "=" + peerURL.String()
	cfg.LogLevel = "warn"
	cfg.UnsafeNoFsync = true // throwaway test cluster: speed over durability

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	defer e.Close()
	select {
	case <-e.Server.ReadyNotify():
		slog.Info("etcd ready", "client", clientURL.String())
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		return fmt.Errorf("etcd not ready after 60s")
	}
	select {
	case <-ctx.Done():
		slog.Info("etcd stopping")
		return nil
	case err := <-e.Err():
		return fmt.Errorf("etcd: %w", err)
	}
}
