package udp

import (
	"context"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/internal/tun"
)

type fakeNode struct {
	dev   *tun.Fake
	bind  *FakeBind
	relay *Relay
	done  chan error
}

func startFake(t *testing.T, fn *FakeNet, addr netip.Addr) *fakeNode {
	t.Helper()
	n := &fakeNode{dev: tun.NewFake("weft.udp", 1472, 64), bind: fn.Bind(addr), done: make(chan error, 1)}
	r, err := NewRelay(Options{Device: n.dev, Bind: n.bind, Port: DefaultPort})
	if err != nil {
		t.Fatal(err)
	}
	n.relay = r
	ctx, cancel := context.WithCancel(context.Background())
	go func() { n.done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-n.done:
		case <-time.After(5 * time.Second):
			t.Error("relay did not stop")
		}
	})
	return n
}

// TestRelayFakes runs two relays over a fake underlay: a batch of packets
// crosses in one send, forged datagrams are dropped and counted, a table
// swap takes effect, and Run stops on its context.
func TestRelayFakes(t *testing.T) {
	fn := NewFakeNet()
	na, nb := startFake(t, fn, nodeA), startFake(t, fn, nodeB)
	localA := []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}
	localB := []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}
	peerA := Peer{Name: "a", UnderlayIP: nodeA, PodCIDRs: localA}
	if p := na.relay.SetPeers(localA, []Peer{{Name: "b", UnderlayIP: nodeB, PodCIDRs: localB}}); len(p) != 0 {
		t.Fatal(p)
	}
	nb.relay.SetPeers(localB, []Peer{peerA})

	na.dev.Inject(ip4("10.244.1.5", "10.244.9.9")) // nobody's
	for range 10 {
		na.dev.Inject(ip4("10.244.1.5", "10.244.2.7"))
	}
	testutil.Eventually(t, "10 packets in b's TUN", func() bool { return len(nb.dev.Written()) == 10 })
	sa, sb := na.relay.Stats(), nb.relay.Stats()
	if sa.Tx.Packets != 10 || sa.Drops["no-route"] != 1 || sb.Rx.Packets != 10 || sb.Rx.Bytes != 10*uint64(len(ip4("10.244.1.5", "10.244.2.7"))) {
		t.Fatalf("a %+v, b %+v", sa, sb)
	}
	if sa.Tx.Batches >= 10 || na.bind.Sends() >= 10 {
		t.Fatalf("10 queued packets took %d batches, %d sends: not batched", sa.Tx.Batches, na.bind.Sends())
	}

	fn.Deliver(netip.AddrPortFrom(a("192.168.77.99"), 8285), netip.AddrPortFrom(nodeB, 8285), ip4("10.244.1.5", "10.244.2.7"))
	fn.Deliver(netip.AddrPortFrom(nodeA, 8285), netip.AddrPortFrom(nodeB, 8285), ip4("10.244.3.5", "10.244.2.7"))
	fn.Deliver(netip.AddrPortFrom(nodeA, 8285), netip.AddrPortFrom(nodeB, 8285), []byte{0x45, 0})
	testutil.Eventually(t, "drops counted", func() bool {
		d := nb.relay.Stats().Drops
		return d["unknown-sender"] == 1 && d["spoofed-source"] == 1 && d["truncated"] == 1
	})
	if len(nb.dev.Written()) != 10 {
		t.Fatal("a forged datagram reached the TUN")
	}

	nb.relay.SetPeers(localB, nil) // a left the cluster
	fn.Deliver(netip.AddrPortFrom(nodeA, 8285), netip.AddrPortFrom(nodeB, 8285), ip4("10.244.1.5", "10.244.2.7"))
	testutil.Eventually(t, "unknown sender after the swap", func() bool { return nb.relay.Stats().Drops["unknown-sender"] == 2 })

	nb.dev.SetWriteError(errors.New("boom"))
	nb.relay.SetPeers(localB, []Peer{peerA})
	fn.Deliver(netip.AddrPortFrom(nodeA, 8285), netip.AddrPortFrom(nodeB, 8285), ip4("10.244.1.5", "10.244.2.7"))
	testutil.Eventually(t, "tun write error counted", func() bool { return nb.relay.Stats().Drops["tun-write"] == 1 })
	nb.dev.SetWriteError(nil)
	fn.Deliver(netip.AddrPortFrom(nodeA, 8285), netip.AddrPortFrom(nodeB, 8285), ip4("10.244.1.5", "10.244.2.7"))
	testutil.Eventually(t, "relay still running after a failed write", func() bool { return len(nb.dev.Written()) == 11 })
}

// TestRelayStopsWhenDeviceGoes: a device closed under the relay (deleted,
// say) ends Run with an error, and Run closes the socket.
func TestRelayStopsWhenDeviceGoes(t *testing.T) {
	fn := NewFakeNet()
	dev := tun.NewFake("weft.udp", 1472, 64)
	r, err := NewRelay(Options{Device: dev, Bind: fn.Bind(nodeA), Port: DefaultPort})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	_ = dev.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Run returned nil after the device went away")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("Run kept running without its device")
	}
}
