package ipip

import (
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/testutil"
)

var kopts = KernelOptions{LocalIP: netip.MustParseAddr("192.0.2.1"), MTU: 1480, PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}

// kwant is the link EnsureKernelLink leaves: down (KernelLinkUp, after
// the guard, brings it up).
const kwant = "ipip local 192.0.2.1 remote <nil> mtu 1480 pmtudisc 10.244.1.0/32"

// ours is a link as EnsureKernelLink makes it, with the MTU given.
func ours(mtu int) *netlink.Iptun {
	l := KernelLink(kopts)
	l.MTU = mtu
	return l
}

// The kernel link as EnsureKernelLink makes it (netlink faked: this
// machine has no ipip module): created once and down until KernelLinkUp,
// adopted untouched by a restarted weftd, replaced when it is anything
// but the link it would make.
func TestEnsureKernelLink(t *testing.T) {
	f := NewFakeLinks()
	created, err := EnsureKernelLink(f, kopts)
	if err != nil || !created {
		t.Fatalf("first: created %v, %v", created, err)
	}
	if got := f.Describe(DefaultDevice); got != kwant {
		t.Fatalf("link %q, want %q (down: no guard yet)", got, kwant)
	}
	if l, _ := f.LinkByName(DefaultDevice); l.(*netlink.Iptun).Proto != unix.IPPROTO_IPIP {
		t.Fatalf("protocol %d, want IPv4 only (4)", l.(*netlink.Iptun).Proto)
	}
	if err := KernelLinkUp(f, ""); err != nil || f.Describe(DefaultDevice) != strings.Replace(kwant, "pmtudisc", "pmtudisc up", 1) {
		t.Fatalf("up: %v, %q", err, f.Describe(DefaultDevice))
	}
	f.Calls()
	if err := KernelLinkUp(f, ""); err != nil || slices.Contains(f.Calls(), "LinkSetUp "+DefaultDevice) {
		t.Fatalf("up again: %v (a link already up is left alone)", err)
	}
	// A restart adopts it: no delete, no add (forwarding never stops).
	created, err = EnsureKernelLink(f, kopts)
	if err != nil || created {
		t.Fatalf("restart: created %v, %v", created, err)
	}
	for _, c := range f.Calls() {
		if strings.HasPrefix(c, "LinkDel") || strings.HasPrefix(c, "LinkAdd") || strings.HasPrefix(c, "LinkSetMTU") {
			t.Fatalf("restart made %q", c)
		}
	}
	// Another underlay address (the node's IP changed), or a userspace
	// TUN left from before the module was there: replaced.
	for name, l := range map[string]netlink.Link{
		"other local": &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1480}, Local: netip.MustParseAddr("192.0.2.9").AsSlice(), PMtuDisc: 1},
		"fixed remote": &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1480}, Local: kopts.LocalIP.AsSlice(),
			Remote: netip.MustParseAddr("192.0.2.2").AsSlice(), PMtuDisc: 1},
		"no pmtudisc": &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1480}, Local: kopts.LocalIP.AsSlice(), Proto: unix.IPPROTO_IPIP},
		"tun":         &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1480}, Mode: netlink.TUNTAP_MODE_TUN},
		"proto any":   func() netlink.Link { l := ours(1480); l.Proto = 0; return l }(),
		"ttl 64":      func() netlink.Link { l := ours(1480); l.Ttl = 64; return l }(),
		"tos":         func() netlink.Link { l := ours(1480); l.Tos = 0x10; return l }(),
		"fou":         func() netlink.Link { l := ours(1480); l.EncapType, l.EncapDport = 1, 5555; return l }(),
		"flow based":  func() netlink.Link { l := ours(1480); l.FlowBased = true; return l }(),
	} {
		f := NewFakeLinks()
		f.Put(l)
		if created, err := EnsureKernelLink(f, kopts); err != nil || !created {
			t.Fatalf("%s: created %v, %v", name, created, err)
		}
		if got := f.Describe(DefaultDevice); got != kwant {
			t.Fatalf("%s: link %q, want %q", name, got, kwant)
		}
	}
	// A wrong MTU on an adopted link is corrected in place, and an address
	// of an earlier pod CIDR goes (it may lie in another node's now).
	f = NewFakeLinks()
	f.Put(ours(1400))
	f.PutAddr(DefaultDevice, "10.244.9.0/32")
	if created, err := EnsureKernelLink(f, kopts); err != nil || created || f.Describe(DefaultDevice) != kwant {
		t.Fatalf("mtu and address fix: created %v, %v, %q", created, err, f.Describe(DefaultDevice))
	}
	// An adopted link that is up (a restart) stays up.
	f = NewFakeLinks()
	up := ours(1480)
	up.Flags |= net.FlagUp
	f.Put(up)
	if _, err := EnsureKernelLink(f, kopts); err != nil || !strings.Contains(f.Describe(DefaultDevice), " up ") {
		t.Fatalf("adopted up: %v, %q", err, f.Describe(DefaultDevice))
	}
}

// Failures leave nothing half made and say what failed.
func TestEnsureKernelLinkFailures(t *testing.T) {
	f := NewFakeLinks()
	f.Fail("LinkAdd", unix.EOPNOTSUPP)
	_, err := EnsureKernelLink(f, kopts)
	if err == nil || !strings.Contains(err.Error(), "ipip module missing") || f.Describe(DefaultDevice) != "" {
		t.Fatalf("no module: %v, link %q", err, f.Describe(DefaultDevice))
	}
	f = NewFakeLinks()
	f.Fail("AddrList", unix.EPERM)
	_, err = EnsureKernelLink(f, kopts)
	if err == nil || !strings.Contains(err.Error(), "addresses") || f.Describe(DefaultDevice) != "" {
		t.Fatalf("address listing fails: %v, link %q (a link it created stays)", err, f.Describe(DefaultDevice))
	}
	f = NewFakeLinks()
	if _, err := EnsureKernelLink(f, kopts); err != nil {
		t.Fatal(err)
	}
	f.Fail("LinkSetUp", unix.EPERM)
	if err := KernelLinkUp(f, ""); err == nil || !strings.Contains(err.Error(), "up") || f.Describe(DefaultDevice) != kwant {
		t.Fatalf("up fails: %v, link %q", err, f.Describe(DefaultDevice))
	}
	// An adopted link is not deleted when a later step fails.
	f = NewFakeLinks()
	f.Put(ours(1480))
	f.Fail("AddrReplace", unix.EPERM)
	if _, err = EnsureKernelLink(f, kopts); err == nil || f.Describe(DefaultDevice) == "" {
		t.Fatalf("adopted, address fails: %v, link %q", err, f.Describe(DefaultDevice))
	}
	for _, bad := range []KernelOptions{
		{LocalIP: netip.MustParseAddr("2001:db8::1"), MTU: 1480, PodCIDR: kopts.PodCIDR},
		{LocalIP: kopts.LocalIP, MTU: 100, PodCIDR: kopts.PodCIDR},
		{LocalIP: kopts.LocalIP, MTU: 1480},
	} {
		f := NewFakeLinks()
		if _, err := EnsureKernelLink(f, bad); err == nil || len(f.Calls()) != 0 {
			t.Fatalf("%+v accepted", bad)
		}
	}
}

// On the real kernel: where Detect says Userspace (this machine) creating
// the link fails with the module named and leaves no link; where it says
// Kernel the link is there as asked.
func TestOpenKernelLinkOnThisKernel(t *testing.T) {
	testutil.RequireRoot(t)
	r, err := HostRoots()
	if err != nil {
		t.Fatal(err)
	}
	d := Detect(r)
	n := testutil.NewNS(t)
	_ = n.Do(func(ns.NetNS) error {
		_, err = OpenKernelLink("", kopts)
		l, lerr := netlink.LinkByName(DefaultDevice)
		t.Logf("detect %s; OpenKernelLink: %v", d.Mode, err)
		if d.Mode == Userspace {
			if err == nil || !strings.Contains(err.Error(), "ipip") || lerr == nil {
				t.Errorf("without the module: err %v, link %v", err, l)
			}
			return nil
		}
		if err != nil || lerr != nil {
			t.Errorf("with the module: %v, %v", err, lerr)
			return nil
		}
		if tl, ok := l.(*netlink.Iptun); !ok || !tl.Local.Equal(kopts.LocalIP.AsSlice()) || tl.Proto != unix.IPPROTO_IPIP || l.Attrs().MTU != 1480 || l.Attrs().Flags&unix.IFF_UP != 0 {
			t.Errorf("link %+v (want down until the guard is in place)", l)
		}
		if err := OpenKernelLinkUp("", ""); err != nil {
			t.Errorf("up: %v", err)
		} else if l, err := netlink.LinkByName(DefaultDevice); err != nil || l.Attrs().Flags&unix.IFF_UP == 0 {
			t.Errorf("after up: %v %+v", err, l)
		}
		return nil
	})
}
