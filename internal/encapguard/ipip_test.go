package encapguard

import (
	"context"
	"net/netip"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

// TestIPIPRules: the IP-in-IP guard matches protocol 4 (no port) and reads
// the inner source right behind the outer header.
func TestIPIPRules(t *testing.T) {
	e := IPIP()
	if got := strings.Join(jump(e), " "); got != "-p ipencap -m comment --comment weft: ipip encapsulation guard -j WEFT-ENC-IPIP" {
		t.Fatalf("jump %q", got)
	}
	if got := u32Inner(e, netip.MustParsePrefix("10.244.1.0/24")); got != "0x0>>0x16&0x3c@0xc&0xffffff00=0xaf40100" {
		t.Fatalf("u32 %q", got)
	}
}

// TestIPIPInNetNS converges the IP-in-IP guard with each iptables backend:
// the read-back compares equal (no second write: "-p ipencap" is what
// iptables-save prints for protocol 4) and Remove leaves nothing.
func TestIPIPInNetNS(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) {
			n := testutil.NewNS(t)
			r := iptables.Runner{Mode: mode, NetNS: n.Path()}
			g := NewIPTables(r)
			ctx := context.Background()
			s := Spec{Encap: IPIP(), PodIface: DefaultPodIface, Peers: []Peer{peer1, peer2}}
			for want := range []int{2, 0} {
				got, err := g.Apply(ctx, s)
				if err != nil || got != []int{2, 0}[want] {
					save, _ := r.Save(ctx, "raw")
					t.Fatalf("apply %d: %d writes, %v\n%s", want, got, err, save)
				}
			}
			if err := g.Remove(ctx, "ipip"); err != nil {
				t.Fatal(err)
			}
			if save, _ := r.Save(ctx, "raw"); strings.Contains(save, "IPIP") {
				t.Fatalf("left after Remove:\n%s", save)
			}
		})
	}
}
