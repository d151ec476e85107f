package masq

import (
	"context"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/weftnet/weft/internal/iptables"
	"github.com/weftnet/weft/internal/iptables/table"
	"github.com/weftnet/weft/internal/testutil"
)

var network = netip.MustParsePrefix("10.244.0.0/16")

func dumpsOf(t *testing.T, save string) map[string]*iptables.Dump {
	t.Helper()
	out := map[string]*iptables.Dump{}
	for _, tb := range []string{"nat", "filter"} {
		d, err := iptables.ParseSave(save, tb)
		if err != nil {
			t.Fatal(err)
		}
		out[tb] = d
	}
	return out
}

// render returns the restore text that makes the kernel match, given the
// current dumps of each table (nil dump = table unread/empty), "" when
// nothing differs.
func render(network netip.Prefix, dumps map[string]*iptables.Dump) string {
	text, _, err := table.Diff(owner, dumps, desired(network))
	if err != nil {
		panic(err)
	}
	return text
}

const converged = `*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-POSTROUTING - [0:0]
:WEFT-MASQ-CLUSTER - [0:0]
-A POSTROUTING -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "weft: masquerade pod traffic" -j WEFT-MASQ-CLUSTER
-A WEFT-MASQ-CLUSTER -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "weft: pod to pod, no SNAT" -j RETURN
-A WEFT-MASQ-CLUSTER -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "weft: pod to outside" -j MASQUERADE --random-fully
COMMIT
*filter
:FORWARD DROP [0:0]
:WEFT-FWD-ACCEPT - [0:0]
:WEFT-POL-FWD - [0:0]
-A FORWARD -j WEFT-POL-FWD
-A FORWARD -m comment --comment "weft: forward pod traffic" -j WEFT-FWD-ACCEPT
-A WEFT-FWD-ACCEPT -s 10.244.0.0/16 -m comment --comment "weft: from pods" -j ACCEPT
-A WEFT-FWD-ACCEPT -d 10.244.0.0/16 -m comment --comment "weft: to pods" -j ACCEPT
COMMIT
`

func TestRenderFromEmpty(t *testing.T) {
	got := render(network, dumpsOf(t, "*nat\n:POSTROUTING ACCEPT [0:0]\nCOMMIT\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n"))
	for _, want := range []string{
		"*nat\n:WEFT-MASQ-CLUSTER - [0:0]\n",
		`-A WEFT-MASQ-CLUSTER -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "weft: pod to pod, no SNAT" -j RETURN`,
		`-A WEFT-MASQ-CLUSTER -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "weft: pod to outside" -j MASQUERADE --random-fully`,
		`-A POSTROUTING -m comment --comment "weft: masquerade pod traffic" -j WEFT-MASQ-CLUSTER`,
		"*filter\n:WEFT-FWD-ACCEPT - [0:0]\n",
		`-A WEFT-FWD-ACCEPT -s 10.244.0.0/16 -m comment --comment "weft: from pods" -j ACCEPT`,
		`-A FORWARD -m comment --comment "weft: forward pod traffic" -j WEFT-FWD-ACCEPT`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in\n%s", want, got)
		}
	}
	// RETURN for pod-to-pod comes before MASQUERADE.
	if strings.Index(got, "-j RETURN") > strings.Index(got, "-j MASQUERADE") {
		t.Error("MASQUERADE before the pod-to-pod RETURN")
	}
}

func TestRenderConvergedIsEmpty(t *testing.T) {
	if got := render(network, dumpsOf(t, converged)); got != "" {
		t.Fatalf("converged state rewritten:\n%s", got)
	}
}

func TestRenderRepairs(t *testing.T) {
	// A rule deleted from our chain: the chain is rewritten, the jump kept.
	broken := strings.Replace(converged, "-A WEFT-FWD-ACCEPT -d 10.244.0.0/16 -m comment --comment \"weft: to pods\" -j ACCEPT\n", "", 1)
	got := render(network, dumpsOf(t, broken))
	if !strings.Contains(got, "*filter\n:WEFT-FWD-ACCEPT") || strings.Contains(got, "-A FORWARD") || strings.Contains(got, "*nat") {
		t.Fatalf("repair:\n%s", got)
	}
	// A duplicated jump is removed; a missing one added; others' rules untouched.
	dup := strings.Replace(converged, "-A POSTROUTING -j KUBE-POSTROUTING\n", "-A POSTROUTING -j KUBE-POSTROUTING\n-A POSTROUTING -m comment --comment \"weft: masquerade pod traffic\" -j WEFT-MASQ-CLUSTER\n", 1)
	got = render(network, dumpsOf(t, dup))
	if !strings.Contains(got, `-D POSTROUTING -m comment --comment "weft: masquerade pod traffic" -j WEFT-MASQ-CLUSTER`) || strings.Contains(got, "KUBE") {
		t.Fatalf("dup jump:\n%s", got)
	}
	// Another network: rules differ, rewritten.
	if got := render(netip.MustParsePrefix("10.10.0.0/16"), dumpsOf(t, converged)); !strings.Contains(got, "10.10.0.0/16") {
		t.Fatalf("network change:\n%s", got)
	}
}

// TestInNetNS loads the chains into a throwaway namespace's own iptables
// (whichever backend Detect picks), reads them back, repairs a hand-made
// deletion and removes everything.
func TestInNetNS(t *testing.T) {
	n := testutil.NewNS(t)
	ctx := context.Background()
	mode, err := iptables.Detect(ctx, n.Path())
	if err != nil {
		t.Fatal(err)
	}
	r := iptables.Runner{Mode: mode, NetNS: n.Path()}
	// Lock the namespace's FORWARD policy to DROP, as hardened hosts do.
	if err := r.Restore(ctx, "*filter\n:FORWARD DROP [0:0]\nCOMMIT\n"); err != nil {
		t.Fatal(err)
	}
	m := New(r, network)
	if wrote, err := m.Apply(ctx); err != nil || !wrote {
		t.Fatalf("apply: %v %v", wrote, err)
	}
	save := func() string {
		var b strings.Builder
		for _, tb := range []string{"nat", "filter"} {
			out, err := r.Save(ctx, tb)
			if err != nil {
				t.Fatal(err)
			}
			b.WriteString(out)
		}
		return b.String()
	}
	got := save()
	for _, want := range []string{
		"-A POSTROUTING -m comment --comment \"weft: masquerade pod traffic\" -j WEFT-MASQ-CLUSTER",
		"-A WEFT-MASQ-CLUSTER -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"weft: pod to pod, no SNAT\" -j RETURN",
		"-A WEFT-MASQ-CLUSTER -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"weft: pod to outside\" -j MASQUERADE --random-fully",
		"-A FORWARD -m comment --comment \"weft: forward pod traffic\" -j WEFT-FWD-ACCEPT",
		"-A WEFT-FWD-ACCEPT -s 10.244.0.0/16 -m comment --comment \"weft: from pods\" -j ACCEPT",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("kernel lacks %q:\n%s", want, got)
		}
	}
	// Converged: nothing written.
	if wrote, err := m.Apply(ctx); err != nil || wrote {
		t.Fatalf("second apply wrote=%v err=%v", wrote, err)
	}
	// Hand-made deletion of the MASQUERADE rule is repaired.
	cmd := exec.Command("nsenter", "--net="+n.Path(), "iptables-"+string(mode), "-t", "nat", "-D", ChainNAT, "2")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("delete by hand: %v %s", err, out)
	}
	if strings.Contains(save(), "MASQUERADE") {
		t.Fatal("hand deletion did not happen")
	}
	if wrote, err := m.Apply(ctx); err != nil || !wrote || !strings.Contains(save(), "-j MASQUERADE --random-fully") {
		t.Fatalf("repair: wrote=%v err=%v", wrote, err)
	}
	if err := m.Remove(ctx); err != nil {
		t.Fatal(err)
	}
	if got := save(); strings.Contains(got, "WEFT-MASQ-CLUSTER") || strings.Contains(got, "WEFT-FWD-ACCEPT") {
		t.Fatalf("remove left:\n%s", got)
	}
}
