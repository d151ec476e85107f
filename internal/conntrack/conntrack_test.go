package conntrack

import (
	"net/netip"
	"testing"
)

func flow(proto uint8, src, dst, replySrc string, dport uint16) Flow {
	s, d, r := netip.MustParseAddr(src), netip.MustParseAddr(dst), netip.MustParseAddr(replySrc)
	return Flow{Proto: proto, Orig: Tuple{Src: s, Dst: d, SPort: 40000, DPort: dport}, Reply: Tuple{Src: r, Dst: s, SPort: dport + 1000, DPort: 40000}}
}

func TestForwardedSeesDNAT(t *testing.T) {
	f := flow(6, "10.0.0.5", "10.96.0.10", "10.244.1.7", 80) // Service 10.96.0.10:80 -> 10.244.1.7:1080
	src, dst, port := f.Forwarded()
	if src != netip.MustParseAddr("10.0.0.5") || dst != netip.MustParseAddr("10.244.1.7") || port != 1080 {
		t.Errorf("Forwarded() = %s %s %d, want the DNATed destination", src, dst, port)
	}
}

func TestDeleteAddrs(t *testing.T) {
	pod := netip.MustParseAddr("10.244.1.7")
	keep := []Flow{flow(6, "10.0.0.5", "10.0.0.6", "10.0.0.6", 80), flow(17, "fd00::1", "fd00::2", "fd00::2", 53)}
	gone := []Flow{
		flow(6, "10.244.1.7", "10.0.0.6", "10.0.0.6", 443),   // from the pod
		flow(17, "10.0.0.5", "10.244.1.7", "10.244.1.7", 53), // to the pod
		flow(6, "10.0.0.5", "10.96.0.10", "10.244.1.7", 80),  // to the pod through a Service
	}
	fk := &Fake{}
	fk.Add(keep...)
	fk.Add(gone...)
	n, err := DeleteAddrs(fk, []netip.Addr{pod})
	if err != nil || n != len(gone) {
		t.Fatalf("DeleteAddrs = %d, %v; want %d", n, err, len(gone))
	}
	if got := fk.Flows(); len(got) != 2 || got[0] != keep[0] || got[1] != keep[1] {
		t.Errorf("kept %v, want %v", got, keep)
	}
	if fk.Dumps != 1 {
		t.Errorf("%d table passes for IPv4 addresses only, want 1", fk.Dumps)
	}
}
