package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/testutil"
)

// The live switch's policy, source-check and masquerade checks.
const (
	swPolName  = "swpol-isolate"
	swPolLabel = "weft-swpol"
	swPolSpoof = 5406 // UDP port on the isolated pod for the forged packets
	swPolMasq  = 5407 // UDP port in the control plane's namespace (outside the cluster network)
	swPolOut   = "172.18.0.2"
	swPolCPNS  = "/run/netns/wl-cp"
)

// swPolicy is a NetworkPolicy that admits into one pod (iso, on the
// streams' receiving node) only pods labelled as its peer (peer, on the
// streams' sending node); denied, beside peer, must never get an answer
// from iso. None of them carries the streams or the TCP pinger.
type swPolicy struct {
	c                 kubernetes.Interface
	ns                string
	iso, peer, denied podNS
	peerNode          string // node of peer and denied: its source check drops denied's forgeries
	peerNodeIP        string // what peer's traffic to outside the cluster network must come from
	spoofed           *testutil.UDPLog
}

// startSwitchPolicy labels three pods next to the streams' pair p, applies
// the policy and waits until it is in effect (peer answered, denied not 3
// times in a row). Cleanup deletes it, removes the labels and waits until
// denied reaches iso again, so later subtests see the mesh unrestricted.
func startSwitchPolicy(t *testing.T, ctx context.Context, c kubernetes.Interface, nodes []*corev1.Node, p pair, remote []pair) *swPolicy {
	t.Helper()
	var spare []corev1.Pod // pods other than p's, by name
	for _, r := range remote {
		if pod := r.from; pod.Name != p.from.Name && pod.Name != p.to.Name && !slices.ContainsFunc(spare, func(o corev1.Pod) bool { return o.Name == pod.Name }) {
			spare = append(spare, pod)
		}
	}
	slices.SortFunc(spare, func(a, b corev1.Pod) int { return strings.Compare(a.Name, b.Name) })
	on := func(node string) []corev1.Pod {
		return slices.DeleteFunc(slices.Clone(spare), func(o corev1.Pod) bool { return o.Spec.NodeName != node })
	}
	src, dst := on(p.from.Spec.NodeName), on(p.to.Spec.NodeName)
	if len(src) < 2 || len(dst) < 1 {
		t.Fatalf("need 2 spare pods on %s and 1 on %s, have %d and %d", p.from.Spec.NodeName, p.to.Spec.NodeName, len(src), len(dst))
	}
	s := &swPolicy{c: c, ns: p.from.Namespace, peerNode: p.from.Spec.NodeName}
	for _, n := range nodes {
		if n.Name == s.peerNode {
			s.peerNodeIP = internalIP(n)
		}
	}
	s.iso, s.peer, s.denied = openPodNS(t, dst[0]), openPodNS(t, src[0]), openPodNS(t, src[1])
	t.Cleanup(s.cleanup(t)) // before the namespaces close
	s.label(t, ctx, s.iso.pod.Name, "isolated")
	s.label(t, ctx, s.peer.pod.Name, "peer")
	pol := &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: swPolName},
		Spec: networkingv1.NetworkPolicySpec{PodSelector: *sel(swPolLabel, "isolated"), PolicyTypes: []networkingv1.PolicyType{ingress},
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{PodSelector: sel(swPolLabel, "peer")}}}}}}
	if _, err := c.NetworkingV1().NetworkPolicies(s.ns).Create(ctx, pol, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	refused := 0
	if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
		if dialTCP(s.denied, s.iso.ip, 300*time.Millisecond) == nil {
			refused = 0
			return false, fmt.Errorf("%s still reaches %s", s.denied.pod.Name, s.iso.pod.Name)
		}
		refused++
		err := dialTCP(s.peer, s.iso.ip, 2*time.Second)
		return err == nil && refused >= 3, fmt.Errorf("denied %d times in a row, %s -> %s: %v", refused, s.peer.pod.Name, s.iso.pod.Name, err)
	}); err != nil {
		t.Fatalf("policy %s not in effect: %v", swPolName, err)
	}
	s.spoofed = testutil.ListenUDP(t, s.iso.ns, swPolSpoof)
	t.Logf("policy %s: only %s (%s) into %s (%s); %s (%s) denied", swPolName, s.peer.pod.Name, s.peerNode,
		s.iso.pod.Name, s.iso.pod.Spec.NodeName, s.denied.pod.Name, s.peerNode)
	return s
}

// label sets (value != "") or removes pod's swPolLabel.
func (s *swPolicy) label(t *testing.T, ctx context.Context, pod, value string) {
	t.Helper()
	v := `null`
	if value != "" {
		v = `"` + value + `"`
	}
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%s}}}`, swPolLabel, v)
	if _, err := s.c.CoreV1().Pods(s.ns).Patch(ctx, pod, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Errorf("label %s: %v", pod, err)
	}
}

func (s *swPolicy) cleanup(t *testing.T) func() {
	return func() {
		ctx := context.Background()
		_ = s.c.NetworkingV1().NetworkPolicies(s.ns).Delete(ctx, swPolName, metav1.DeleteOptions{})
		for _, p := range []podNS{s.iso, s.peer} {
			s.label(t, ctx, p.pod.Name, "")
		}
		if err := waitFor(ctx, 30*time.Second, func() (bool, error) {
			err := dialTCP(s.denied, s.iso.ip, time.Second)
			return err == nil, err
		}); err != nil {
			t.Errorf("policy %s deleted but %s still cannot reach %s: %v", swPolName, s.denied.pod.Name, s.iso.pod.Name, err)
		}
	}
}

// dialTCP connects from a pod to the echo server of the pod at ip.
func dialTCP(from podNS, ip netip.Addr, timeout time.Duration) error {
	return from.ns.Do(func(ns.NetNS) error {
		c, err := net.DialTimeout("tcp4", netip.AddrPortFrom(ip, tcpPort).String(), timeout)
		if err == nil {
			c.Close()
		}
		return err
	})
}

// swPolWatch probes denied -> iso (which must never answer) and peer ->
// iso (counted only: it shows the probes ran while the network carried
// traffic) every ~100 ms from a switch's ConfigMap update until it has
// converged.
type swPolWatch struct {
	stop     context.CancelFunc
	done     chan struct{}
	mu       sync.Mutex
	probes   int
	answered []time.Duration // denied probes that connected, since start
	peerOK   int
}

func (s *swPolicy) watch(ctx context.Context) *swPolWatch {
	wctx, stop := context.WithCancel(ctx)
	w := &swPolWatch{stop: stop, done: make(chan struct{})}
	start := time.Now()
	go func() {
		defer close(w.done)
		for wctx.Err() == nil {
			at := time.Since(start)
			denied := dialTCP(s.denied, s.iso.ip, 150*time.Millisecond)
			peer := dialTCP(s.peer, s.iso.ip, 300*time.Millisecond)
			w.mu.Lock()
			w.probes++
			if denied == nil {
				w.answered = append(w.answered, at)
			}
			if peer == nil {
				w.peerOK++
			}
			w.mu.Unlock()
			time.Sleep(100 * time.Millisecond)
		}
	}()
	return w
}

// endWatch stops w and requires that denied never got an answer.
func (s *swPolicy) endWatch(t *testing.T, w *swPolWatch, i int, st switchStep) {
	t.Helper()
	w.stop()
	<-w.done
	t.Logf("switch %d to %s: during the switch %s -> %s answered %d of %d probes (denied), %s -> %s %d (allowed)",
		i+1, st.id, s.denied.pod.Name, s.iso.pod.Name, len(w.answered), w.probes, s.peer.pod.Name, s.iso.pod.Name, w.peerOK)
	if len(w.answered) > 0 {
		t.Errorf("switch to %s: policy %s not applied: %s reached %s at +%v after the ConfigMap update", st.id, swPolName,
			s.denied.pod.Name, s.iso.pod.Name, w.answered)
	}
	if w.probes < 3 {
		t.Errorf("switch to %s: only %d policy probes ran during the switch", st.id, w.probes)
	}
}

// check runs after switch i: the allowed pair answers, a packet forged
// with peer's source from denied does not reach iso (and peer's node's
// WEFT-POL-SPOOF counts it) while peer's own does, and peer's traffic to
// an address outside the cluster network leaves SNATed to its node.
func (s *swPolicy) check(t *testing.T, ctx context.Context, i int, st switchStep) {
	t.Helper()
	if err := waitFor(ctx, 5*time.Second, func() (bool, error) {
		err := dialTCP(s.peer, s.iso.ip, time.Second)
		return err == nil, err
	}); err != nil {
		t.Errorf("switch to %s: allowed %s -> %s: %v", st.id, s.peer.pod.Name, s.iso.pod.Name, err)
	}
	s.checkSpoof(t, ctx, i, st)
	if from, err := s.masqSource(); err != nil || from != s.peerNodeIP {
		t.Errorf("switch to %s: %s -> %s: arrived from %q (%v), want SNAT to %s's %s", st.id, s.peer.pod.Name, swPolOut, from, err, s.peerNode, s.peerNodeIP)
	} else {
		t.Logf("switch %d to %s: allowed pair answered, %s -> %s (outside the cluster network) arrived from %s", i+1, st.id, s.peer.pod.Name, swPolOut, from)
	}
}

func (s *swPolicy) checkSpoof(t *testing.T, ctx context.Context, i int, st switchStep) {
	t.Helper()
	sport := uint16(41000 + i)
	real, forged := fmt.Sprintf("real-%d ", i), fmt.Sprintf("forged-%d ", i)
	before, err := spoofDropsIn(ctx, "/run/netns/"+s.peerNode)
	if err != nil {
		t.Fatal(err)
	}
	if err := waitFor(ctx, 5*time.Second, func() (bool, error) {
		if err := testutil.SendRawUDP(s.peer.ns, s.peer.ip, s.iso.ip, sport, swPolSpoof, real); err != nil {
			return false, err
		}
		time.Sleep(200 * time.Millisecond)
		return len(s.spoofed.Received(real)) > 0, fmt.Errorf("%s's own packet never reached %s", s.peer.pod.Name, s.iso.pod.Name)
	}); err != nil {
		t.Errorf("switch to %s: %v", st.id, err)
	}
	for range 3 {
		if err := testutil.SendRawUDP(s.denied.ns, s.peer.ip, s.iso.ip, sport, swPolSpoof, forged); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(500 * time.Millisecond)
	after, err := spoofDropsIn(ctx, "/run/netns/"+s.peerNode)
	if err != nil {
		t.Fatal(err)
	}
	got := s.spoofed.Received(forged)
	t.Logf("switch %d to %s: %d packets forged by %s with %s's source: %d reached %s, %s dropped %d as spoofed", i+1, st.id, 3,
		s.denied.pod.Name, s.peer.pod.Name, len(got), s.iso.pod.Name, s.peerNode, after-before)
	if len(got) > 0 || after-before < 3 {
		t.Errorf("switch to %s: forged packets reached %s: %v; WEFT-POL-SPOOF on %s counted %d of 3", st.id, s.iso.pod.Name, got, s.peerNode, after-before)
	}
}

// masqSource sends a datagram from peer to swPolOut (the control plane's
// underlay address: not a node, outside the cluster network) and returns
// the source address it arrived from.
func (s *swPolicy) masqSource() (string, error) {
	cp, err := ns.GetNS(swPolCPNS)
	if err != nil {
		return "", err
	}
	defer cp.Close()
	var rx net.PacketConn
	if err := cp.Do(func(ns.NetNS) (err error) {
		rx, err = net.ListenPacket("udp4", netip.AddrPortFrom(netip.MustParseAddr(swPolOut), swPolMasq).String())
		return err
	}); err != nil {
		return "", err
	}
	defer rx.Close()
	var tx net.Conn
	if err := s.peer.ns.Do(func(ns.NetNS) (err error) {
		tx, err = net.Dial("udp4", netip.AddrPortFrom(netip.MustParseAddr(swPolOut), swPolMasq).String())
		return err
	}); err != nil {
		return "", err
	}
	defer tx.Close()
	buf := make([]byte, 64)
	var lastErr error
	for range 3 {
		if _, err := tx.Write([]byte("masq")); err != nil {
			return "", err
		}
		_ = rx.SetReadDeadline(time.Now().Add(time.Second))
		_, from, err := rx.ReadFrom(buf)
		if err == nil {
			return from.(*net.UDPAddr).IP.String(), nil
		}
		lastErr = err
	}
	return "", lastErr
}
