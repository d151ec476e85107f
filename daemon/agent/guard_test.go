package agent

import (
	"context"
	"net/netip"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/vxlan"
)

// TestAgentGuardFollowsNodes: the VXLAN port admits exactly the nodes
// running weftd, with their pod CIDRs, as Nodes come and go.
func TestAgentGuardFollowsNodes(t *testing.T) {
	h := start(t, node("n1", "172.18.0.2", "10.244.1.0/24"), peerNode("n2", "172.18.0.3", "10.244.2.0/24", "02:00:00:00:00:22"),
		node("n3", "172.18.0.4", "10.244.3.0/24"), netconf(goodConf))
	h.eventually("ready", h.ready)
	admits := func(sender, inner string) bool {
		return h.g.Admits(vxlan.Type, netip.MustParseAddr(sender), netip.MustParseAddr(inner))
	}
	h.eventually("n2 admitted", func() bool { return admits("172.18.0.3", "10.244.2.7") })
	if admits("172.18.0.3", "10.244.3.7") || admits("172.18.0.4", "10.244.3.7") {
		t.Fatal("guard admits a forged inner source or a node without weftd")
	}
	if s, _ := h.g.Spec(vxlan.Type); s.Encap.Port != 8472 {
		t.Fatalf("guard on port %d", s.Encap.Port)
	}
	n3 := peerNode("n3", "172.18.0.4", "10.244.3.0/24", "02:00:00:00:00:33")
	if _, err := h.c.CoreV1().Nodes().Update(context.Background(), n3, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("n3 admitted", func() bool { return admits("172.18.0.4", "10.244.3.7") })
	if err := h.c.CoreV1().Nodes().Delete(context.Background(), "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("n2 no longer admitted", func() bool { return !admits("172.18.0.3", "10.244.2.7") })
}
