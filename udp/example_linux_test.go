package udp_test

import (
	"context"
	"log/slog"
	"net/netip"

	"github.com/weftnet/weft/internal/tun"
	"github.com/weftnet/weft/udp"
)

// Example shows how a backend runs the relay for its lifetime: Start opens
// (or adopts) the device and the socket, gives the device the node's pod
// CIDR address, routes the peers' pod CIDRs through it and runs the relay
// on the lifetime context; Apply swaps the peers; Stop cancels the
// context and waits (with cleanup it also removes the device).
func Example() {
	ctx, stop := context.WithCancel(context.Background()) // the backend's lifetime
	defer stop()
	cfg, _ := udp.DecodeConfig([]byte(`{"type": "udp"}`))
	dev, err := tun.Open(tun.Options{Name: udp.DefaultDevice, MTU: cfg.DeviceMTU(1500), Log: slog.Default()})
	if err != nil {
		return
	}
	relay, err := udp.NewRelay(udp.Options{Device: dev, Bind: udp.NewSocket(), Port: uint16(cfg.Port), Log: slog.Default()})
	if err != nil {
		_ = dev.Close()
		return
	}
	// (address 10.244.1.0/32 on weft.udp and the peers' routes go through the route writer)
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	problems := relay.SetPeers([]netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}, []udp.Peer{
		{Name: "node2", UnderlayIP: netip.MustParseAddr("192.168.77.12"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}},
	})
	_ = problems                          // ApplyResult.Problems
	_ = relay.Stats()                     // metrics, /readyz details (Stats.TUNMode, Stats.SocketMode)
	stop()                                // Stop
	<-done                                // the device stays for the next weftd
	_ = tun.Remove(udp.DefaultDevice, "") // Stop with cleanup only
}
