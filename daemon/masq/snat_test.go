package masq_test

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/daemon/masq"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/vxlan"
)

// whoami listens in n on addr and answers each connection with the
// address the connection came from.
func whoami(t *testing.T, n ns.NetNS, addr string) {
	t.Helper()
	var ln net.Listener
	if err := n.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			ap, _ := netip.ParseAddrPort(c.RemoteAddr().String())
			_, _ = io.WriteString(c, ap.Addr().Unmap().String()+"\n")
			c.Close()
		}
	}()
}

func seenAs(t *testing.T, from ns.NetNS, addr string) string {
	t.Helper()
	var line string
	if err := from.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", addr, 3*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err = bufio.NewReader(c).ReadString('\n')
		return err
	}); err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	return strings.TrimSpace(line)
}

// TestSNATOnlyLeavingTheClusterNetwork runs two nodes with the VXLAN
// backend and masq on node1, whose FORWARD policy is DROP: a pod reaching
// an address outside the cluster network (node2's underlay address) is
// seen as node1; reaching a pod on node2 it keeps its own address.
func TestSNATOnlyLeavingTheClusterNetwork(t *testing.T) {
	ctx := context.Background()
	u := nettopo.NewUnderlay(t)
	n1, n2 := u.AddNode(t, 1), u.AddNode(t, 2)
	p1, p2 := n1.AddPod(t, 1450), n2.AddPod(t, 1450)
	var peers []backend.Peer
	var backends []*vxlan.Backend
	for _, n := range []*nettopo.Node{n1, n2} {
		k, err := vxlan.NewNetlinkAt(n.NS.Path())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(k.Close)
		b := vxlan.New(vxlan.Config{VNI: 1, Port: 8472}, k, route.New(route.NewNetlink(k.Handle()), slog.Default()), nil, slog.Default())
		pub, err := b.Start(ctx, n.Local())
		if err != nil {
			t.Fatal(err)
		}
		backends = append(backends, b)
		peers = append(peers, backend.Peer{Name: n.Name, UnderlayIP: n.UnderlayIP, PodCIDRs: []netip.Prefix{n.PodCIDR}, Backends: []string{vxlan.Type}, Attrs: pub.Attrs})
	}
	for _, b := range backends {
		if _, err := b.Apply(ctx, peers); err != nil {
			t.Fatal(err)
		}
	}
	mode, err := iptables.Detect(ctx, n1.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	r := iptables.Runner{Mode: mode, NetNS: n1.NS.Path()}
	if err := r.Restore(ctx, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	whoami(t, n2.NS, n2.UnderlayIP.String()+":7200")
	whoami(t, p2.NS, p2.IP.String()+":7200")
	// Without weft's chains the DROP policy stops pod traffic.
	if err := p1.NS.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp", p2.IP.String()+":7200", time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}); err == nil {
		t.Fatal("pod traffic forwarded despite FORWARD DROP: the test proves nothing")
	}
	if _, err := masq.New(r, nettopo.PodNetwork()).Apply(ctx); err != nil {
		t.Fatal(err)
	}
	if got := seenAs(t, p1.NS, n2.UnderlayIP.String()+":7200"); got != n1.UnderlayIP.String() {
		t.Fatalf("pod -> outside seen as %s, want node1 %s (masqueraded)", got, n1.UnderlayIP)
	}
	if got := seenAs(t, p1.NS, p2.IP.String()+":7200"); got != p1.IP.String() {
		t.Fatalf("pod -> pod seen as %s, want the pod's own %s (never SNATed)", got, p1.IP)
	}
}
