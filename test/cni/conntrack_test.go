package cni

import (
	"errors"
	"net"
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/conntrack"
)

// DEL removes the node's conntrack entries of the pod's address, in both
// directions and behind DNAT, before the address is released: an old client
// of the pod must not reach a new pod holding the reused address on an
// entry conntrack already calls ESTABLISHED. Other pods' entries stay. The
// address is found from the endpoint record and prevResult: pod a is
// deleted with both, pod c after the runtime lost its cache (no
// prevResult, record only).
func TestDelForgetsConntrack(t *testing.T) {
	e := newEnv(t)
	wc := e.weftConf("weft-ipam")
	wc["endpointDir"] = t.TempDir()
	l := e.confList("1.1.0", wc)
	a, b, c := e.newPod("ct-a"), e.newPod("ct-b"), e.newPod("ct-c")
	ipA, ipB, ipC := podIP(t, e.mustAdd(l, a)), podIP(t, e.mustAdd(l, b)), podIP(t, e.mustAdd(l, c))
	client, remote, svc := netip.MustParseAddr("10.66.0.9"), netip.MustParseAddr("10.66.1.1"), netip.MustParseAddr("10.96.0.10")
	for i, ip := range []netip.Addr{ipA, ipB, ipC} {
		p := uint16(40000 + 10*i)
		e.ctCreate(6, ip, p, remote, 443, remote, ip)            // the pod's own connection out
		e.ctCreate(17, client, p+1, ip, 53, ip, client)          // a client of the pod
		e.ctCreate(6, client, p+2, svc, 80, ip, client)          // a client through a Service (DNAT to the pod)
		e.ctCreate(6, client, 39999, remote, 80, remote, client) // unrelated to any pod
	}
	if n := e.ctCount(ipA); n != 3 {
		t.Fatalf("%d entries of %s before DEL, want the 3 created", n, ipA)
	}

	if err := e.del(l, a); err != nil {
		t.Fatalf("DEL a: %v", err)
	}
	if n := e.ctCount(ipA); n != 0 {
		t.Errorf("%d conntrack entries of %s after its DEL, want 0", n, ipA)
	}
	e.clearCache() // no prevResult for c: the endpoint record names the address
	if err := e.del(l, c); err != nil {
		t.Fatalf("DEL c: %v", err)
	}
	if n := e.ctCount(ipC); n != 0 {
		t.Errorf("%d conntrack entries of %s after its DEL without prevResult, want 0", n, ipC)
	}
	if n := e.ctCount(ipB); n != 3 {
		t.Errorf("%d entries of the live pod %s left, want its 3", n, ipB)
	}
	if n := e.ctCount(remote); n != 2 { // b's own connection, and the unrelated one (one tuple)
		t.Errorf("%d entries with %s left, want 2", n, remote)
	}
}

// ctCreate adds a conntrack entry in the node netns: orig src:sport ->
// dst:dport, replies from replySrc to replyDst (replySrc != dst is DNAT).
func (e *env) ctCreate(proto uint8, src netip.Addr, sport uint16, dst netip.Addr, dport uint16, replySrc, replyDst netip.Addr) {
	e.t.Helper()
	ip := func(a netip.Addr) net.IP { return net.IP(a.AsSlice()) }
	f := &netlink.ConntrackFlow{FamilyType: netlink.FAMILY_V4, TimeOut: 300,
		Forward: netlink.IPTuple{Protocol: proto, SrcIP: ip(src), SrcPort: sport, DstIP: ip(dst), DstPort: dport},
		Reverse: netlink.IPTuple{Protocol: proto, SrcIP: ip(replySrc), SrcPort: dport, DstIP: ip(replyDst), DstPort: sport}}
	if proto == 6 {
		f.ProtoInfo = &netlink.ProtoInfoTCP{State: 3} // ESTABLISHED
	}
	e.in(func() error {
		err := netlink.ConntrackCreate(netlink.ConntrackTable, netlink.FAMILY_V4, f)
		if errors.Is(err, unix.EEXIST) {
			return nil // the unrelated entry, created once per pod
		}
		return err
	})
}

// ctCount counts the node netns' conntrack entries that have a in either
// direction.
func (e *env) ctCount(a netip.Addr) int {
	e.t.Helper()
	n := 0
	e.in(func() error {
		k, err := conntrack.Open()
		if err != nil {
			return err
		}
		defer k.Close()
		flows, err := k.List(conntrack.IPv4)
		for _, f := range flows {
			if f.Touches(a) {
				n++
			}
		}
		return err
	})
	return n
}
