package encapguard

import (
	"context"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/testutil"
)

func spec(port int, peers ...Peer) Spec {
	return Spec{Encap: VXLAN(port), PodIface: DefaultPodIface, Peers: peers}
}

var (
	peer1 = Peer{Name: "node1", UnderlayIP: netip.MustParseAddr("192.168.77.11"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24")}}
	peer2 = Peer{Name: "node2", UnderlayIP: netip.MustParseAddr("192.168.77.12"), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.2.0/24")}}
)

// TestU32Inner pins the expression to the form iptables-save prints
// (read back from iptables 1.8.9, both backends), so a converged chain
// compares equal.
func TestU32Inner(t *testing.T) {
	got := u32Inner(VXLAN(8472), netip.MustParsePrefix("10.244.1.0/24"))
	if want := "0x0>>0x16&0x3c@0x1a&0xffff=0x800&&0x0>>0x16&0x3c@0x2a&0xffffff00=0xaf40100"; got != want {
		t.Fatalf("u32 %q, want %q", got, want)
	}
	if got := u32Inner(UDP(8285), netip.MustParsePrefix("10.0.0.0/8")); got != "0x0>>0x16&0x3c@0x14&0xff000000=0xa000000" {
		t.Fatalf("udp u32 %q", got)
	}
}

// TestDstRule pins the inner-destination check: IPv4 frames only, the
// local prefixes merged into sorted ranges (a single address printed
// alone), at most u32Max ranges, none without an IPv4 prefix.
func TestDstRule(t *testing.T) {
	pp := func(ss ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, s := range ss {
			out = append(out, netip.MustParsePrefix(s))
		}
		return out
	}
	s := spec(8472)
	s.Local = pp("10.245.0.9/32", "10.244.1.0/24", "10.244.0.0/24", "fd00::/64")
	want := `-m u32 --u32 0x0>>0x16&0x3c@0x1a&0xffff=0x800 -m u32 ! --u32 0x0>>0x16&0x3c@0x2e&0xffffffff=0xaf40000:0xaf401ff,0xaf50009 -m comment --comment weft: vxlan drop foreign-inner-destination -j DROP`
	if got := strings.Join(dstRule(s), " "); got != want {
		t.Fatalf("vxlan rule\n got %s\nwant %s", got, want)
	}
	u := Spec{Encap: UDP(8285), Local: pp("10.244.3.0/24")}
	if got := strings.Join(dstRule(u), " "); got != `-m u32 ! --u32 0x0>>0x16&0x3c@0x18&0xffffffff=0xaf40300:0xaf403ff -m comment --comment weft: udp drop foreign-inner-destination -j DROP` {
		t.Fatalf("udp rule %s", got)
	}
	if r := dstRule(Spec{Encap: IPIP(), Local: pp("fd00::/64")}); r != nil {
		t.Fatalf("no IPv4 local prefix, rule %v", r)
	}
	var many []netip.Prefix
	for i := range 12 {
		many = append(many, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i * 2), 0, 0}), 16))
	}
	rs := ranges(many)
	if len(rs) != u32Max || rs[u32Max-1] != [2]uint32{10<<24 | 18<<16, 10<<24 | 22<<16 | 0xffff} {
		t.Fatalf("12 prefixes: %d ranges, last %#x", len(rs), rs[len(rs)-1])
	}
}

func TestRenderOrder(t *testing.T) {
	cs := chains(spec(8472, peer2, peer1))
	if len(cs) != 1 {
		t.Fatalf("%d chains for 2 peers", len(cs))
	}
	rs := cs[0].rules
	var got []string
	for _, r := range rs {
		got = append(got, iptables.Comment(r))
	}
	if got := iptables.Comment(chains(Spec{Encap: VXLAN(8472), PodIface: DefaultPodIface, Local: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}})[0].rules[3]); got != "weft: vxlan drop foreign-inner-destination" {
		t.Fatalf("fourth rule with a local CIDR: %q", got)
	}
	want := []string{"weft: vxlan drop from-pod", "weft: vxlan not for this node", "weft: vxlan drop unknown-sender",
		"weft: vxlan from 192.168.77.11 pods 10.244.1.0/24", "weft: vxlan from 192.168.77.12 pods 10.244.2.0/24", "weft: vxlan drop forged-inner-source"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("rule order\n got %v\nwant %v", got, want)
	}
}

func TestFake(t *testing.T) {
	f := NewFake()
	ctx := context.Background()
	if n, _ := f.Apply(ctx, spec(8472, peer1)); n != 1 {
		t.Fatal("first apply wrote nothing")
	}
	if n, _ := f.Apply(ctx, spec(8472, peer1)); n != 0 {
		t.Fatal("same spec rewritten")
	}
	if !f.Admits("vxlan", peer1.UnderlayIP, netip.MustParseAddr("10.244.1.5")) || f.Admits("vxlan", peer1.UnderlayIP, netip.MustParseAddr("10.244.2.5")) ||
		f.Admits("vxlan", peer2.UnderlayIP, netip.MustParseAddr("10.244.2.5")) {
		t.Fatal("fake admits the wrong packets")
	}
}

// TestIPTablesInNetNS converges the guard in a throwaway namespace with
// each iptables backend: read-back equal (no second write), a port change
// moves the jump, drift is repaired, Remove leaves nothing.
func TestIPTablesInNetNS(t *testing.T) {
	testutil.RequireRoot(t)
	for _, mode := range []iptables.Mode{iptables.Legacy, iptables.NFT} {
		t.Run(string(mode), func(t *testing.T) {
			n := testutil.NewNS(t)
			r := iptables.Runner{Mode: mode, NetNS: n.Path()}
			g := NewIPTables(r)
			ctx := context.Background()
			apply := func(s Spec, want int) {
				t.Helper()
				got, err := g.Apply(ctx, s)
				if err != nil || got != want {
					save, _ := r.Save(ctx, "raw")
					t.Fatalf("apply: %d writes, %v; want %d\n%s", got, err, want, save)
				}
			}
			apply(spec(8472, peer1, peer2), 2)
			apply(spec(8472, peer1, peer2), 0)
			var many []Peer
			for i := range 100 {
				many = append(many, Peer{UnderlayIP: netip.AddrFrom4([4]byte{192, 168, 1, byte(i + 1)}),
					PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(100 + i), 0}), 24)}})
			}
			apply(spec(8472, append(many, peer1)...), 2) // a tree of chains
			apply(spec(8472, append(many, peer1)...), 0)
			apply(spec(8472, peer1), 2)
			if save, _ := r.Save(ctx, "raw"); strings.Contains(save, Chain("vxlan")+"-") {
				t.Fatalf("sub-chains left after the peers went:\n%s", save)
			}
			apply(spec(8472, append(many, peer1)...), 2) // Remove must take the tree too
			if err := g.Remove(ctx, "vxlan"); err != nil {
				t.Fatal(err)
			}
			apply(spec(8472, peer1), 2)
			apply(spec(4789, peer1), 1)
			save, _ := r.Save(ctx, "raw")
			if strings.Count(save, "-j WEFT-ENC-VXLAN") != 1 || !strings.Contains(save, "--dport 4789") || strings.Contains(save, "8472") {
				t.Fatalf("after port change:\n%s", save)
			}
			sets, _ := r.IPSetSaveNamed(ctx, Set("vxlan"))
			if !strings.Contains(sets, "192.168.77.11") || strings.Contains(sets, "192.168.77.12") {
				t.Fatalf("set after peer removal:\n%s", sets)
			}
			// Drift: a rule deleted and a member removed by hand.
			bin := "iptables-" + string(mode)
			if out, err := exec.Command("nsenter", "--net="+n.Path(), "--", bin, "-t", "raw", "-D", Chain("vxlan"), "1").CombinedOutput(); err != nil {
				t.Fatalf("delete rule: %v %s", err, out)
			}
			if out, err := exec.Command("nsenter", "--net="+n.Path(), "--", "ipset", "del", Set("vxlan"), "192.168.77.11").CombinedOutput(); err != nil {
				t.Fatalf("ipset del: %v %s", err, out)
			}
			apply(spec(4789, peer1), 2)
			apply(spec(4789, peer1), 0)
			d, err := g.Drops(ctx, "vxlan")
			if err != nil || len(d) != len(Reasons()) {
				t.Fatalf("drops %v %v", d, err)
			}
			if err := g.Remove(ctx, "vxlan"); err != nil {
				t.Fatal(err)
			}
			save, _ = r.Save(ctx, "raw")
			sets, _ = r.IPSetSaveNamed(ctx, Set("vxlan"), tempSet("vxlan"))
			if strings.Contains(save, "WEFT-") || sets != "" {
				t.Fatalf("left after Remove:\n%s\n%s", save, sets)
			}
			if err := g.Remove(ctx, "vxlan"); err != nil {
				t.Fatalf("second remove: %v", err)
			}
		})
	}
}

// countersOnly is a Tables whose iptables-save -c output the test sets.
type countersOnly struct {
	Tables
	save string
}

func (c *countersOnly) SaveCounters(context.Context, string) (string, error) { return c.save, nil }

func TestDropsSurviveCounterReset(t *testing.T) {
	dump := func(n int) string {
		return "*raw\n:PREROUTING ACCEPT [0:0]\n:WEFT-ENC-VXLAN - [0:0]\n" +
			"[" + strings.Repeat("1", n) + ":99] -A WEFT-ENC-VXLAN -m set ! --match-set weft-e-vxlan src -m comment --comment \"weft: vxlan drop unknown-sender\" -j DROP\nCOMMIT\n"
	}
	tb := &countersOnly{save: dump(2)} // 11 packets
	g := NewIPTables(tb)
	ctx := context.Background()
	if d, _ := g.Drops(ctx, "vxlan"); d[ReasonUnknownSender] != 11 {
		t.Fatalf("drops %v", d)
	}
	tb.save = dump(1) // chain rewritten: the kernel counts 1 again
	if d, _ := g.Drops(ctx, "vxlan"); d[ReasonUnknownSender] != 12 || d[ReasonForgedInner] != 0 {
		t.Fatalf("drops after reset %v, want 12", d)
	}
}

func TestCollector(t *testing.T) {
	f := NewFake()
	f.SetDrops("vxlan", map[string]uint64{ReasonUnknownSender: 7, ReasonForgedInner: 2})
	reg := prometheus.NewRegistry()
	reg.MustRegister(NewCollector(f, slog.Default(), "vxlan"))
	mfs, err := reg.Gather()
	if err != nil || len(mfs) != 1 || mfs[0].GetName() != "weft_encap_dropped_packets_total" {
		t.Fatalf("gathered %v %v", mfs, err)
	}
	got := map[string]float64{}
	for _, m := range mfs[0].GetMetric() {
		labels := map[string]string{}
		for _, l := range m.GetLabel() {
			labels[l.GetName()] = l.GetValue()
		}
		if labels["encap"] != "vxlan" {
			t.Fatalf("labels %v", labels)
		}
		got[labels["reason"]] = m.GetCounter().GetValue()
	}
	if got[ReasonUnknownSender] != 7 || got[ReasonForgedInner] != 2 || got[ReasonFromPod] != 0 || got[ReasonForeignDst] != 0 || len(got) != 4 {
		t.Fatalf("metric values %v", got)
	}
}
