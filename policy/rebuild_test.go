package policy

import (
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/podnet"

	"github.com/weftnet/weft/policy/rules"
)

func runningPod(ns, name, uid, node, ip string) *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(uid)},
		Spec:   corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}}
}

// Which records the rebuild writes, and which veths it leaves unmatched.
func TestRebuildRecords(t *testing.T) {
	addr := netip.MustParseAddr
	att := func(id, ip string) Attachment {
		return Attachment{ContainerID: id, IfName: "eth0", IPs: []netip.Addr{addr(ip)}}
	}
	veth := func(id string) string { return podnet.HostVethName(id, "eth0") }
	atts := []Attachment{att("ok", "10.244.1.2"), att("has", "10.244.1.3"), att("nopod", "10.244.1.4"),
		att("static", "10.244.1.5"), att("elsewhere", "10.244.1.6"), att("done", "10.244.1.7"), att("notaveth", "10.244.1.8")}
	mirror := runningPod("kube-system", "etcd-n1", "mirror-uid", "n1", "10.244.1.5")
	mirror.Annotations = map[string]string{rules.MirrorAnnotation: "manifest-hash"}
	done := runningPod("d", "job", "uid-job", "n1", "10.244.1.7")
	done.Status.Phase = corev1.PodSucceeded
	pods := []*corev1.Pod{runningPod("a", "web", "uid-web", "n1", "10.244.1.2"), runningPod("a", "has", "uid-has", "n1", "10.244.1.3"),
		mirror, runningPod("b", "far", "uid-far", "n2", "10.244.1.6"), done}
	have := []endpoint.Endpoint{{HostVeth: veth("has"), PodNamespace: "a", PodName: "has"}}
	veths := []string{veth("ok"), veth("has"), veth("nopod"), veth("static"), veth("elsewhere"), veth("done"), veth("noalloc")}

	write, miss := rebuildRecords("n1", veths, atts, pods, have)
	got := map[string]endpoint.Endpoint{}
	for _, ep := range write {
		if err := ep.Validate(); err != nil {
			t.Errorf("invalid record: %v", err)
		}
		got[ep.HostVeth] = ep
	}
	if len(got) != 2 {
		t.Fatalf("records %+v, want ok and static", write)
	}
	if ep := got[veth("ok")]; ep.PodNamespace != "a" || ep.PodName != "web" || ep.PodUID != "uid-web" || ep.ContainerID != "ok" ||
		ep.IfName != "eth0" || len(ep.IPs) != 1 || ep.IPs[0] != "10.244.1.2" {
		t.Errorf("record of ok: %+v", ep)
	}
	if ep := got[veth("static")]; ep.PodName != "etcd-n1" || ep.PodUID != "manifest-hash" {
		t.Errorf("record of the static pod: %+v (want the mirror annotation as UID)", ep)
	}
	why := map[string]string{}
	for _, m := range miss {
		why[m.HostVeth] = m.Why
	}
	for v, want := range map[string]string{veth("nopod"): "no running Pod", veth("elsewhere"): "no running Pod",
		veth("done"): "no running Pod", veth("noalloc"): "no IPAM allocation"} {
		if !strings.Contains(why[v], want) {
			t.Errorf("unmatched %s: %q, want %q", v, why[v], want)
		}
	}
	if len(miss) != 4 {
		t.Errorf("unmatched: %+v", miss)
	}

	// Two running pods claiming one address: no guess.
	pods = append(pods, runningPod("c", "twin", "uid-twin", "n1", "10.244.1.2"))
	write, miss = rebuildRecords("n1", []string{veth("ok")}, atts, pods, nil)
	if len(write) != 0 || len(miss) != 1 || !strings.Contains(miss[0].Why, "both claim") {
		t.Errorf("ambiguous address: %+v %+v", write, miss)
	}
}
