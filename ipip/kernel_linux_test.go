package ipip

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/testutil"
)

var kopts = KernelOptions{LocalIP: netip.MustParseAddr("192.0.2.1"), MTU: 1480, PodCIDR: netip.MustParsePrefix("10.244.1.0/24")}

const kwant = "ipip local 192.0.2.1 remote <nil> mtu 1480 pmtudisc up 10.244.1.0/32"

// The kernel link as EnsureKernelLink makes it (netlink faked: this
// machine has no ipip module): created once, adopted untouched by a
// restarted weftd, replaced when it is something else.
func TestEnsureKernelLink(t *testing.T) {
	f := NewFakeLinks()
	created, err := EnsureKernelLink(f, kopts)
	if err != nil || !created {
		t.Fatalf("first: created %v, %v", created, err)
	}
	if got := f.Describe(DefaultDevice); got != kwant {
		t.Fatalf("link %q, want %q", got, kwant)
	}
	f.Calls()
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
		"no pmtudisc": &netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1480}, Local: kopts.LocalIP.AsSlice()},
		"tun":         &netlink.Tuntap{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1480}, Mode: netlink.TUNTAP_MODE_TUN},
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
	// A wrong MTU on an adopted link is corrected in place.
	f = NewFakeLinks()
	f.Put(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1400}, Local: kopts.LocalIP.AsSlice(), PMtuDisc: 1})
	if _, err := EnsureKernelLink(f, kopts); err != nil || f.Describe(DefaultDevice) != kwant {
		t.Fatalf("mtu fix: %v, %q", err, f.Describe(DefaultDevice))
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
	f.Fail("LinkSetUp", unix.EPERM)
	_, err = EnsureKernelLink(f, kopts)
	if err == nil || !strings.Contains(err.Error(), "up") || f.Describe(DefaultDevice) != "" {
		t.Fatalf("up fails: %v, link %q (a link it created stays)", err, f.Describe(DefaultDevice))
	}
	// An adopted link is not deleted when a later step fails.
	f = NewFakeLinks()
	f.Put(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: DefaultDevice, MTU: 1480}, Local: kopts.LocalIP.AsSlice(), PMtuDisc: 1})
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
		if tl, ok := l.(*netlink.Iptun); !ok || !tl.Local.Equal(kopts.LocalIP.AsSlice()) || l.Attrs().MTU != 1480 || l.Attrs().Flags&unix.IFF_UP == 0 {
			t.Errorf("link %+v", l)
		}
		return nil
	})
}
