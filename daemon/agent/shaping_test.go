package agent

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/shaping"
)

// The ConfigMap's bandwidth section turns weftd's shaping on: the
// conflist names the shaping socket and drops the reference bandwidth
// plugin; an invalid section is refused whole (the running configuration
// stays); removing the section gives the conflist back its bandwidth
// plugin and switches shaping off.
func TestAgentBandwidthSection(t *testing.T) {
	k := &shaping.Fake{}
	svc := shaping.NewService(&shaping.Reconciler{Kernel: k})
	h := startWith(t, func(h *harness) {
		h.shaper = svc
		h.opt.EndpointDir, h.opt.PolicySocket = filepath.Join(h.dir, "endpoints"), filepath.Join(h.dir, "weftd.sock")
	}, node("n1", "172.18.0.2", "10.244.1.0/24"), netconf(strings.TrimSuffix(goodConf, "}")+`,"bandwidth":{"podCeil":"1G"}}`))
	conflist := func() string {
		data, _ := os.ReadFile(filepath.Join(h.opt.CNIConfDir, install.ConflistName))
		return string(data)
	}
	h.eventually("conflist with shaping", func() bool {
		c := conflist()
		return strings.Contains(c, `"shapingSocket": "`+h.opt.PolicySocket+`"`) && !strings.Contains(c, `"type": "bandwidth"`)
	})
	if svc.Rec.Current().PodCeil != 1e9 {
		t.Fatalf("shaper config %+v", svc.Rec.Current())
	}
	update := func(data string) {
		cm := netconf(data)
		cm.ResourceVersion = ""
		if _, err := h.c.CoreV1().ConfigMaps(cm.Namespace).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	update(strings.TrimSuffix(goodConf, "}") + `,"bandwidth":{"podCeil":"20G"}}`)
	h.eventually("invalid section reported", func() bool {
		_, reasons := h.status.Ready()
		return strings.Contains(strings.Join(reasons, " "), "bandwidth.podCeil")
	})
	if svc.Rec.Current().PodCeil != 1e9 || !strings.Contains(conflist(), "shapingSocket") {
		t.Fatalf("invalid section half-applied: %+v", svc.Rec.Current())
	}
	update(goodConf)
	h.eventually("conflist without shaping", func() bool {
		c := conflist()
		return !strings.Contains(c, "shapingSocket") && strings.Contains(c, `"type": "bandwidth"`)
	})
}
