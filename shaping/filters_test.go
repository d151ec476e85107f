package shaping

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// The address filters of a dual-stack class: IPv4 at FilterPrio on the
// source (egress) or destination (ingress) word, IPv6 at FilterPrio6 on
// the four words of the source or destination address.
func TestAddrFiltersBothFamilies(t *testing.T) {
	cl := Class{Minor: 0x2a, Addrs: []netip.Addr{netip.MustParseAddr("fd78::5"), netip.MustParseAddr("10.78.0.5"), netip.MustParseAddr("fd78::6")}}
	for _, c := range []struct {
		dir        Direction
		off4, off6 int32
	}{{Egress, 12, 8}, {Ingress, 16, 24}} {
		fs := addrFilters(3, c.dir, cl)
		if len(fs) != 2 {
			t.Fatalf("%s: %d filters, want one per family", c.dir, len(fs))
		}
		v4, v6 := fs[0], fs[1]
		if v4.Priority != FilterPrio || v4.Protocol != unix.ETH_P_IP || len(v4.Sel.Keys) != 1 || v4.Sel.Keys[0].Off != c.off4 || v4.Sel.Keys[0].Val != 0x0a4e0005 {
			t.Errorf("%s IPv4 filter: prio %d proto %x keys %+v", c.dir, v4.Priority, v4.Protocol, v4.Sel.Keys)
		}
		if v6.Priority != FilterPrio6 || v6.Protocol != unix.ETH_P_IPV6 || len(v6.Sel.Keys) != 4 {
			t.Fatalf("%s IPv6 filter: prio %d proto %x keys %+v", c.dir, v6.Priority, v6.Protocol, v6.Sel.Keys)
		}
		want := []uint32{0xfd780000, 0, 0, 5}
		for i, k := range v6.Sel.Keys {
			if k.Off != c.off6+int32(4*i) || k.Val != want[i] || k.Mask != 0xffffffff {
				t.Errorf("%s IPv6 key %d: %+v, want off %d val %x", c.dir, i, k, c.off6+int32(4*i), want[i])
			}
		}
		if v4.Handle != 0x2a || v6.Handle != 0x2a || v6.ClassId != 0x1002a {
			t.Errorf("%s handles %x %x class %x", c.dir, v4.Handle, v6.Handle, v6.ClassId)
		}
	}
}
