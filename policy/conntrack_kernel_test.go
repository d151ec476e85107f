package policy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/endpoint"

	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/policy/rules/rulestest"
)

// TestConntrackCutOnDeny runs the production controller wiring
// (NewNodeController: real iptables, ipsets and conntrack of a node
// namespace) over three pods. Pod c is isolated for ingress from the start.
// While a steady UDP flow a -> b, an established TCP connection a -> b,
// a TCP connection a -> b on which only b sends, and a TCP connection
// c -> b (on which only b sends, c's ingress would refuse b as a peer) run,
// a policy lets only c reach b. The three flows from a stop: their
// conntrack entries are deleted, so their next packets are NEW and denied.
// On the connection where b pushes, b's next segment (no SYN) must not be
// taken for a new connection b -> a, which a's open ingress would admit. The c -> b connection lives on: its original direction
// is still allowed, and flushing all of b's entries would have cut it (b's
// next segment would be a NEW b -> c, which c's ingress policy drops).
func TestConntrackCutOnDeny(t *testing.T) {
	tn := newTestNode(t)
	dir := t.TempDir()
	for _, ep := range tn.eps {
		if err := endpoint.Write(dir, ep); err != nil {
			t.Fatal(err)
		}
	}
	client := fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, n := range tn.namespaces {
		client.CoreV1().Namespaces().Create(ctx, n, metav1.CreateOptions{})
	}
	for _, p := range tn.k8sPods {
		client.CoreV1().Pods("t").Create(ctx, p, metav1.CreateOptions{})
	}
	client.NetworkingV1().NetworkPolicies("t").Create(ctx, rulestest.NP("t", "c-isolated", map[string]string{"pod": "c"}, rulestest.TIn), metav1.CreateOptions{})
	ctl := runNodeController(t, ctx, cancel, informers.NewSharedInformerFactory(client, 0), NodeOptions{
		NodeName: "n1", NetNS: tn.node.Path(), Bridge: tn.bridge, EndpointDir: dir, ResyncInterval: time.Minute})
	wctx, wcancel := context.WithTimeout(ctx, 15*time.Second)
	defer wcancel()
	for _, v := range tn.veth {
		if err := ctl.WaitProgrammed(wctx, v); err != nil {
			t.Fatal(err)
		}
	}
	testutil.Eventually(t, "c isolated", func() bool { return !probeOnce(t, tn.pods["b"], "tcp", tn.ip["c"], 80) })

	echoServer(t, tn.pods["b"], "0.0.0.0:82")
	pushServer(t, tn.pods["b"], "0.0.0.0:83")
	udpAB := writeFlow(t, tn.pods["a"], "udp4", tn.ip["b"]+":81")
	tcpAB := writeFlow(t, tn.pods["a"], "tcp4", tn.ip["b"]+":82")
	pushAB := tcpPushFlow(t, tn.pods["a"], tn.ip["b"]+":83")
	tcpCB := tcpPushFlow(t, tn.pods["c"], tn.ip["b"]+":83")
	alive := func(last *atomic.Int64) bool { return time.Since(time.Unix(0, last.Load())) < 400*time.Millisecond }
	testutil.Eventually(t, "all four flows carry traffic", func() bool { return alive(udpAB) && alive(tcpAB) && alive(pushAB) && alive(tcpCB) })

	client.NetworkingV1().NetworkPolicies("t").Create(ctx, rulestest.WithIngress(rulestest.NP("t", "b-from-c", map[string]string{"pod": "b"}, rulestest.TIn),
		rulestest.In([]rulestest.From{{PodSelector: rulestest.LS("pod", "c")}})), metav1.CreateOptions{})
	testutil.Eventually(t, "policy programmed", func() bool { return !probeOnce(t, tn.pods["a"], "tcp", tn.ip["b"], 80) })
	deadline := time.Now().Add(5 * time.Second)
	for (alive(udpAB) || alive(tcpAB) || alive(pushAB)) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if alive(udpAB) {
		t.Errorf("steady UDP flow a -> b still answered 5s after a policy denied it")
	}
	if alive(tcpAB) {
		t.Errorf("established TCP connection a -> b still echoes 5s after a policy denied it")
	}
	if alive(pushAB) {
		t.Errorf("established TCP connection a -> b on which b pushes still delivers 5s after a policy denied it")
	}
	time.Sleep(time.Second) // the one-way connection must survive, not just outlast a check
	if !alive(tcpCB) {
		t.Errorf("allowed TCP connection c -> b (b sends, c's ingress is isolated) was cut by the policy change")
	}
}

// echoServer echoes every TCP connection on addr inside n.
func echoServer(t *testing.T, n ns.NetNS, addr string) {
	t.Helper()
	streamServer(t, n, addr, func(c net.Conn) {
		buf := make([]byte, 64)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			if _, err := c.Write(buf[:k]); err != nil {
				return
			}
		}
	})
}

// pushServer writes to every TCP connection on addr every 50ms, unasked.
func pushServer(t *testing.T, n ns.NetNS, addr string) {
	t.Helper()
	streamServer(t, n, addr, func(c net.Conn) {
		for {
			if _, err := c.Write([]byte("tick")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
}

func streamServer(t *testing.T, n ns.NetNS, addr string, handle func(net.Conn)) {
	var ln net.Listener
	if err := n.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", addr)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	conns := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(conns)
				return
			}
			conns <- c
			go handle(c)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		for c := range conns {
			c.Close()
		}
	})
}

// dialIn connects from inside n.
func dialIn(t *testing.T, n ns.NetNS, proto, addr string) net.Conn {
	t.Helper()
	var c net.Conn
	if err := n.Do(func(ns.NetNS) error {
		var err error
		c, err = net.DialTimeout(proto, addr, 2*time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// writeFlow writes every 50ms on one socket (one conntrack entry) and
// returns the time of the last answer.
func writeFlow(t *testing.T, n ns.NetNS, proto, addr string) *atomic.Int64 {
	c := dialIn(t, n, proto, addr)
	var last atomic.Int64
	go func() {
		for {
			if _, err := c.Write([]byte("x")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	go readLoop(c, &last)
	return &last
}

// tcpPushFlow only reads what the server pushes; it returns the time of
// the last data.
func tcpPushFlow(t *testing.T, n ns.NetNS, addr string) *atomic.Int64 {
	c := dialIn(t, n, "tcp4", addr)
	var last atomic.Int64
	go readLoop(c, &last)
	return &last
}

func readLoop(c net.Conn, last *atomic.Int64) {
	buf := make([]byte, 64)
	for {
		if _, err := c.Read(buf); err != nil {
			if errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) {
				return
			}
			time.Sleep(10 * time.Millisecond) // e.g. a reset: keep the last time
			continue
		}
		last.Store(time.Now().UnixNano())
	}
}

// runNodeController runs the production wiring until the test ends, then
// removes what it programmed in opt.NetNS.
func runNodeController(t *testing.T, ctx context.Context, cancel func(), factory informers.SharedInformerFactory, opt NodeOptions) *Controller {
	t.Helper()
	ctl, closeFn, err := NewNodeController(ctx, factory, opt)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- ctl.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		closeFn()
		if err := Uninstall(context.Background(), opt.NetNS); err != nil {
			t.Error(err)
		}
	})
	return ctl
}
