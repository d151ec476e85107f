package agent

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// A label change re-syncs (a route-reflector label, an external BGP peer's
// nodeSelector re-forms sessions without a restart); a heartbeat does not.
func TestRelevantNodeChangeLabels(t *testing.T) {
	node := func(labels map[string]string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: labels}}
	}
	base := node(map[string]string{"kubernetes.io/hostname": "n"})
	rr := node(map[string]string{"kubernetes.io/hostname": "n", "weft.dev/route-reflector": "true"})
	if !relevantNodeChange(base, rr) || !relevantNodeChange(rr, base) {
		t.Fatal("adding or removing weft.dev/route-reflector is not a relevant change")
	}
	if !relevantNodeChange(base, node(map[string]string{"kubernetes.io/hostname": "n", "rack": "a"})) {
		t.Fatal("a new label (an external peer's nodeSelector) is not a relevant change")
	}
	beat := node(map[string]string{"kubernetes.io/hostname": "n"})
	beat.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady}}
	if relevantNodeChange(base, beat) {
		t.Fatal("a status change re-syncs")
	}
}

func TestPeerAndLocalCarryLabels(t *testing.T) {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"weft.dev/route-reflector": "true"},
		Annotations: map[string]string{"weft.dev/as-number": "65010", "other": "x"}}}
	p := PeerFromNode(n)
	if p.Labels["weft.dev/route-reflector"] != "true" || p.Attrs["weft.dev/as-number"] != "65010" || p.Attrs["other"] != "" {
		t.Fatalf("peer %+v", p)
	}
}
