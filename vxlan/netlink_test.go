package vxlan_test

import (
	"net/netip"
	"testing"

	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/nettopo"
	"github.com/weftnet/weft/internal/testutil"
	"github.com/weftnet/weft/vxlan"
)

// TestEnsureDeviceAdoptsOrReplaces checks the real kernel shim: a matching
// device is adopted as is (same index and MAC), an MTU change is applied in
// place, and a device with other VXLAN parameters or of another kind under
// the same name is replaced.
func TestEnsureDeviceAdoptsOrReplaces(t *testing.T) {
	testutil.RequireRoot(t)
	u := nettopo.NewUnderlay(t)
	n := u.AddNode(t, 1)
	k, err := vxlan.NewNetlinkAt(n.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(k.Close)
	spec := vxlan.DeviceSpec{Name: "weft.vxlan", VNI: 1, Port: 8472, LocalIP: n.UnderlayIP, UnderlayLink: "eth0", MTU: 1450}
	d1, err := k.EnsureDevice(spec)
	if err != nil || d1.Adopted || d1.MTU != 1450 {
		t.Fatalf("create: %+v %v", d1, err)
	}
	d2, err := k.EnsureDevice(spec)
	if err != nil || !d2.Adopted || d2.Index != d1.Index || d2.MAC != d1.MAC {
		t.Fatalf("adopt: %+v %v (first %+v)", d2, err, d1)
	}
	spec.MTU = 1400
	d3, err := k.EnsureDevice(spec)
	if err != nil || !d3.Adopted || d3.Index != d1.Index || d3.MTU != 1400 {
		t.Fatalf("mtu change: %+v %v", d3, err)
	}
	for _, change := range []func(*vxlan.DeviceSpec){
		func(s *vxlan.DeviceSpec) { s.VNI = 2 },
		func(s *vxlan.DeviceSpec) { s.Port = 4789 },
		func(s *vxlan.DeviceSpec) { s.LocalIP = netip.MustParseAddr("192.168.77.99") },
	} {
		prev, _ := k.EnsureDevice(spec)
		change(&spec)
		d, err := k.EnsureDevice(spec)
		if err != nil || d.Adopted || d.Index == prev.Index {
			t.Fatalf("changed spec %+v not replaced: %+v %v", spec, d, err)
		}
		l, _ := n.H.LinkByName("weft.vxlan")
		vx := l.(*netlink.Vxlan)
		if vx.VxlanId != spec.VNI || vx.Port != spec.Port || vx.SrcAddr.String() != spec.LocalIP.String() || vx.Learning {
			t.Fatalf("kernel device %+v does not match %+v", vx, spec)
		}
	}
	// Another kind of link under the name is replaced too.
	if err := k.DeleteDevice("weft.vxlan"); err != nil {
		t.Fatal(err)
	}
	if err := n.H.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "weft.vxlan"}}); err != nil {
		t.Fatal(err)
	}
	if d, err := k.EnsureDevice(spec); err != nil || d.Adopted {
		t.Fatalf("bridge named weft.vxlan: %+v %v", d, err)
	}
	if l, _ := n.H.LinkByName("weft.vxlan"); l.Type() != "vxlan" {
		t.Fatalf("still a %s", l.Type())
	}
	if err := k.DeleteDevice("weft.vxlan"); err != nil {
		t.Fatal(err)
	}
	if err := k.DeleteDevice("weft.vxlan"); err != nil {
		t.Fatalf("deleting a missing device: %v", err)
	}
}
