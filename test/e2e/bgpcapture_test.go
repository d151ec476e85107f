package e2e

import (
	"bufio"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// ipipCapture is what tcpdump saw on the underlay bridges: IP-in-IP
// packets by outer (source, destination) address, packets between pod
// addresses carried plainly by (source node, destination node), and every
// IP-in-IP packet tcpdump did not decode as a valid outer and inner IPv4
// header.
type ipipCapture struct {
	mu    sync.Mutex
	ipip  map[[2]string]int
	plain map[[2]string]int
	bad   []string
	owner func(netip.Addr) string // pod address -> node name
	stop  []func()
}

// hostPair is "a > b:" with optional ports, as tcpdump -nn prints it.
var hostPair = regexp.MustCompile(`(\d+\.\d+\.\d+\.\d+)(?:\.\d+)? > (\d+\.\d+\.\d+\.\d+)(?:\.\d+)?: `)

// captureIPIP runs tcpdump -v (which checks IPv4 header checksums) on
// each bridge of the underlay namespace, for IP protocol 4 and for
// packets to or from the pod network, until Stop.
func captureIPIP(t *testing.T, nodes []*corev1.Node, bridges ...string) *ipipCapture {
	t.Helper()
	cidrs := map[netip.Prefix]string{}
	for _, n := range nodes {
		if p, err := netip.ParsePrefix(n.Annotations[annoPodCIDR]); err == nil {
			cidrs[p] = n.Name
		}
	}
	c := &ipipCapture{ipip: map[[2]string]int{}, plain: map[[2]string]int{}, owner: func(a netip.Addr) string {
		for p, n := range cidrs {
			if p.Contains(a) {
				return n
			}
		}
		return ""
	}}
	for _, br := range bridges {
		c.stop = append(c.stop, c.run(t, br))
	}
	t.Cleanup(c.Stop)
	return c
}

func (c *ipipCapture) run(t *testing.T, bridge string) func() {
	t.Helper()
	var rec strings.Builder
	stop := tcpdump(t, func(l string) {
		// tcpdump -v continues a packet on indented lines.
		if strings.HasPrefix(l, " ") || strings.HasPrefix(l, "\t") {
			rec.WriteString(" " + strings.TrimSpace(l))
			return
		}
		c.record(rec.String())
		rec.Reset()
		rec.WriteString(l)
	}, "-i", bridge, "-nn", "-l", "-v", "ip proto 4 or (ip and net 10.244.0.0/16)")
	return func() {
		stop()
		c.record(rec.String())
	}
}

// tcpdump runs tcpdump with args in the underlay namespace, waits until it
// listens, and hands each line it prints to line (from one goroutine)
// until stop, which returns once the last line was handled.
func tcpdump(t *testing.T, line func(string), args ...string) (stop func()) {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", "wl-underlay", "tcpdump"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errOut, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("tcpdump: %v", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line(sc.Text())
		}
	}()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(errOut)
		once := sync.Once{}
		for sc.Scan() {
			if strings.Contains(sc.Text(), "listening on") {
				once.Do(func() { close(ready) })
			}
		}
		once.Do(func() { close(ready) })
	}()
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("tcpdump %v did not start", args)
	}
	return func() {
		_ = cmd.Process.Signal(syscall.SIGINT)
		<-done
		_ = cmd.Wait()
	}
}

// record files one packet.
func (c *ipipCapture) record(rec string) {
	if rec == "" {
		return
	}
	m := hostPair.FindAllStringSubmatchIndex(rec, -1)
	if len(m) == 0 {
		return
	}
	addr := func(i, g int) string { return rec[m[i][2*g]:m[i][2*g+1]] }
	c.mu.Lock()
	defer c.mu.Unlock()
	if strings.Contains(rec, "proto IPIP (4)") {
		c.ipip[[2]string{addr(0, 1), addr(0, 2)}]++
		inner := rec[m[0][1]:]
		valid := len(m) >= 2 && strings.HasPrefix(inner, "IP (") && !strings.Contains(rec, "bad cksum")
		if valid {
			a, errA := netip.ParseAddr(addr(1, 1))
			b, errB := netip.ParseAddr(addr(1, 2))
			valid = errA == nil && errB == nil && c.owner(a) != "" && c.owner(b) != ""
		}
		if !valid && len(c.bad) < 5 {
			c.bad = append(c.bad, rec)
		}
		return
	}
	a, errA := netip.ParseAddr(addr(0, 1))
	b, errB := netip.ParseAddr(addr(0, 2))
	if errA == nil && errB == nil {
		if from, to := c.owner(a), c.owner(b); from != "" && to != "" {
			c.plain[[2]string{from, to}]++
		}
	}
}

// Stop ends the captures (after the last probes' packets).
func (c *ipipCapture) Stop() {
	if c.stop == nil {
		return
	}
	time.Sleep(500 * time.Millisecond)
	for _, s := range c.stop {
		s()
	}
	c.stop = nil
}

// expectEncap checks, for every ordered pair of distinct nodes, IP-in-IP
// between their underlay addresses when encap says so and plain packets
// between their pods otherwise (never both), and that every IP-in-IP
// packet decoded as valid outer and inner IPv4. It stops the capture.
func (c *ipipCapture) expectEncap(t *testing.T, nodes []*corev1.Node, encap func(from, to *corev1.Node) bool) {
	t.Helper()
	c.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rec := range c.bad {
		t.Errorf("IP-in-IP packet not decoded as valid outer/inner IPv4: %s", rec)
	}
	total := 0
	for _, from := range nodes {
		for _, to := range nodes {
			if from.Name == to.Name {
				continue
			}
			ipip, plain := c.ipip[[2]string{internalIP(from), internalIP(to)}], c.plain[[2]string{from.Name, to.Name}]
			total += ipip
			want := "plain"
			if encap(from, to) {
				want = "IP-in-IP"
			}
			if encap(from, to) && (ipip == 0 || plain > 0) || !encap(from, to) && (ipip > 0 || plain == 0) {
				t.Errorf("%s -> %s: want %s, saw %d IP-in-IP packets and %d plain pod packets", from.Name, to.Name, want, ipip, plain)
			}
		}
	}
	t.Logf("underlay capture: %d IP-in-IP packets between nodes, all decoded as outer+inner IPv4; plain pod packets by pair %v", total, fmtPairs(c.plain))
}

func fmtPairs(m map[[2]string]int) string {
	var parts []string
	for k, v := range m {
		parts = append(parts, fmt.Sprintf("%s>%s:%d", strings.TrimPrefix(k[0], "wl-"), strings.TrimPrefix(k[1], "wl-"), v))
	}
	return strings.Join(parts, " ")
}
