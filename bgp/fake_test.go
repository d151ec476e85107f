package bgp

import (
	"context"
	"net/netip"
	"testing"
	"time"
)

func TestFakeFiltersLikeTheSpeaker(t *testing.T) {
	ctx := context.Background()
	nodes := testNodes(3)
	cfg := defaultCfg()
	f := NewFake()
	if err := f.Start(ctx, cfg.SpeakerConfig(nodes[0])); err != nil {
		t.Fatal(err)
	}
	if ok, c := f.Running(); !ok || c.RouterID != nodes[0].Addr || c.ListenPort != 179 || c.GracefulRestart != 120*time.Second || c.ASN != 64512 {
		t.Fatalf("running %v config %+v", ok, c)
	}
	sessions := Sessions(nodes[0], nodes, cfg, nil)
	f.SetImportPolicy(PolicyFor(nodes[0], nodes, sessions))
	a := netip.MustParseAddr
	n2, n3 := a("10.0.0.2"), a("10.0.0.3")
	f.Inject(
		[]Candidate{{netip.MustParsePrefix("10.244.2.0/24"), n2, n2}},
		[]Candidate{{netip.MustParsePrefix("10.244.3.0/24"), n2, n2}, {netip.MustParsePrefix("10.244.3.0/24"), n3, n3}},
		[]Candidate{{netip.MustParsePrefix("0.0.0.0/0"), n3, n3}},
	)
	<-f.Changed()
	if got := routesString(f.Learned()); got != "10.244.2.0/24via10.0.0.2 10.244.3.0/24via10.0.0.3" {
		t.Errorf("learned %s", got)
	}
	if rej, total := f.Rejected(); len(rej) != 2 || total != 2 {
		t.Errorf("rejected %+v %d", rej, total)
	}
}
