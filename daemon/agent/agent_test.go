package agent

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/daemon/api"
	"github.com/weftnet/weft/daemon/config"
	"github.com/weftnet/weft/daemon/fabric"
	"github.com/weftnet/weft/daemon/install"
	"github.com/weftnet/weft/internal/backend"
	"github.com/weftnet/weft/internal/encapguard"
	"github.com/weftnet/weft/internal/route"
	"github.com/weftnet/weft/internal/subnetfile"
	"github.com/weftnet/weft/vxlan"
)

type fakeTables struct {
	mu       sync.Mutex
	restores []string
}

func (f *fakeTables) Restore(_ context.Context, text string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restores = append(f.restores, text)
	return nil
}

func (f *fakeTables) Save(context.Context, string) (string, error) { return "", nil }

type fakeHost struct{}

func (fakeHost) UnderlayLink(ip netip.Addr) (string, int, error) {
	if ip == netip.MustParseAddr("172.18.0.2") {
		return "eth0", 1500, nil
	}
	return "", 0, fmt.Errorf("no link holds %s", ip)
}

func node(name, ip, podCIDR string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{}}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}
	if podCIDR != "" {
		n.Spec.PodCIDR, n.Spec.PodCIDRs = podCIDR, []string{podCIDR}
	}
	return n
}

func netconf(data string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: config.Name, Namespace: config.Namespace, ResourceVersion: "1"},
		Data: map[string]string{config.Key: data}}
}

type harness struct {
	t      *testing.T
	c      *fake.Clientset
	k      *vxlan.Fake
	g      *encapguard.Fake
	status *api.Status
	dir    string
	opt    Options
	shaper Shaper
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, objs ...any) *harness { t.Helper(); return startWith(t, nil, objs...) }

// startWith is start with setup applied to the harness before the agent runs.
func startWith(t *testing.T, setup func(*harness), objs ...any) *harness {
	t.Helper()
	h := &harness{t: t, k: vxlan.NewFake(map[string]int{"eth0": 1500}), g: encapguard.NewFake(), status: api.NewStatus(), dir: t.TempDir(), done: make(chan error, 1)}
	var rt []any
	rt = append(rt, objs...)
	h.c = fake.NewClientset()
	for _, o := range rt {
		switch v := o.(type) {
		case *corev1.Node:
			_, _ = h.c.CoreV1().Nodes().Create(context.Background(), v, metav1.CreateOptions{})
		case *corev1.ConfigMap:
			_, _ = h.c.CoreV1().ConfigMaps(v.Namespace).Create(context.Background(), v, metav1.CreateOptions{})
		}
	}
	h.opt = Options{NodeName: "n1", CNIConfDir: filepath.Join(h.dir, "net.d"), SubnetFile: filepath.Join(h.dir, "subnet.json"), ResyncInterval: 200 * time.Millisecond}
	if setup != nil {
		setup(h)
	}
	h.run()
	return h
}

func (h *harness) run() {
	log := slog.Default()
	// A new route writer per run, as a restarted weftd has.
	mgr := fabric.NewManager([]backend.Factory{vxlan.Factory{Kernel: h.k, Routes: route.New(h.k, log), Guard: h.g, Log: log}}, log)
	a := New(h.opt, Deps{Client: h.c, Backends: mgr, Tables: &fakeTables{}, Host: fakeHost{}, Status: h.status, Metrics: api.NewMetrics(), Log: log, Shaper: h.shaper})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	h.done = make(chan error, 1)
	go func() { h.done <- a.Run(ctx) }()
	h.t.Cleanup(h.stop)
}

func (h *harness) stop() {
	if h.cancel != nil {
		h.cancel()
		<-h.done
		h.cancel = nil
	}
}

func (h *harness) eventually(what string, f func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !f() {
		if time.Now().After(deadline) {
			_, reasons := h.status.Ready()
			h.t.Fatalf("timed out waiting for %s (not ready: %v)", what, reasons)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) ready() bool { ok, _ := h.status.Ready(); return ok }

func (h *harness) annotations(name string) map[string]string {
	n, err := h.c.CoreV1().Nodes().Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil
	}
	return n.Annotations
}

const goodConf = `{"network":"10.244.0.0/16","subnetLen":24,"backend":{"type":"vxlan","vni":1,"port":8472}}`

// peerNode is a node whose weftd already published its annotations.
func peerNode(name, ip, cidr, mac string) *corev1.Node {
	n := node(name, ip, cidr)
	n.Annotations = map[string]string{backend.AnnoBackends: "vxlan", backend.AnnoPublicIP: ip, backend.AnnoPodCIDR: cidr, vxlan.AnnoVTEPMAC: mac}
	return n
}

func TestAgentBringsNodeUp(t *testing.T) {
	h := start(t, node("n1", "172.18.0.2", "10.244.1.0/24"), peerNode("n2", "172.18.0.3", "10.244.2.0/24", "02:00:00:00:00:22"),
		node("n3", "172.18.0.4", "10.244.3.0/24"), netconf(goodConf))
	h.eventually("ready", h.ready)
	a := h.annotations("n1")
	if a[backend.AnnoPodCIDR] != "10.244.1.0/24" || a[backend.AnnoPublicIP] != "172.18.0.2" || a[backend.AnnoBackend] != "vxlan" ||
		a[backend.AnnoBackends] != "vxlan" || a[vxlan.AnnoVTEPMAC] == "" {
		t.Fatalf("annotations %v", a)
	}
	sf, err := subnetfile.Read(h.opt.SubnetFile)
	if err != nil || sf.Subnet != netip.MustParsePrefix("10.244.1.0/24") || sf.MTU != 1450 || sf.Network != netip.MustParsePrefix("10.244.0.0/16") {
		t.Fatalf("subnet file %+v %v", sf, err)
	}
	data, err := os.ReadFile(filepath.Join(h.opt.CNIConfDir, install.ConflistName))
	if err != nil || !strings.Contains(string(data), `"cniVersion": "1.0.0"`) || !strings.Contains(string(data), h.opt.SubnetFile) {
		t.Fatalf("conflist %s %v", data, err)
	}
	// n2 is programmed; n3 (no weftd yet) is not.
	st := h.k.Snapshot()
	if len(st.FDB) != 1 || st.FDB["02:00:00:00:00:22"] != netip.MustParseAddr("172.18.0.3") || st.Routes[netip.MustParsePrefix("10.244.2.0/24")] != netip.MustParseAddr("10.244.2.0") {
		t.Fatalf("kernel %+v", st)
	}
	// n3's weftd comes up: entries appear.
	n3 := peerNode("n3", "172.18.0.4", "10.244.3.0/24", "02:00:00:00:00:33")
	if _, err := h.c.CoreV1().Nodes().Update(context.Background(), n3, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("n3 programmed", func() bool { return len(h.k.Snapshot().FDB) == 2 })
	// n2 deleted: its entries go.
	if err := h.c.CoreV1().Nodes().Delete(context.Background(), "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("n2 removed", func() bool {
		st := h.k.Snapshot()
		_, ok := st.Routes[netip.MustParsePrefix("10.244.2.0/24")]
		return len(st.FDB) == 1 && !ok
	})
}

func TestAgentRejectsBadConfigKeepsRunning(t *testing.T) {
	h := start(t, node("n1", "172.18.0.2", "10.244.1.0/24"), peerNode("n2", "172.18.0.3", "10.244.2.0/24", "02:00:00:00:00:22"), netconf(goodConf))
	h.eventually("ready", h.ready)
	before := h.k.Snapshot()
	conflist, _ := os.ReadFile(filepath.Join(h.opt.CNIConfDir, install.ConflistName))
	for i, tc := range []struct{ data, want string }{
		{`{"network": "10.244.0.0/16", "backend": {`, "invalid JSON"},
		{`{"network":"10.244.0.0/16","backend":{"type":"carrier-pigeon"}}`, `unknown backend "carrier-pigeon"`},
		{`{"network":"172.16.0.0/12","backend":{"type":"vxlan"}}`, "overlaps the node network"},
		{`{"network":"10.244.0.0/16","cniVersion":"1.1.0","backend":{"type":"vxlan","vni":0}}`, "vni 0"},
	} {
		cm := netconf(tc.data)
		cm.ResourceVersion = fmt.Sprint(10 + i)
		if _, err := h.c.CoreV1().ConfigMaps(config.Namespace).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		h.eventually("reason "+tc.want, func() bool {
			_, reasons := h.status.Ready()
			return len(reasons) == 1 && strings.Contains(reasons[0], tc.want) && strings.Contains(reasons[0], "still running the previous configuration")
		})
		h.eventually("event "+tc.want, func() bool {
			evs, _ := h.c.CoreV1().Events(config.Namespace).List(context.Background(), metav1.ListOptions{})
			for _, e := range evs.Items {
				if e.Reason == ReasonInvalid && e.InvolvedObject.Name == config.Name && e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, tc.want) {
					return true
				}
			}
			return false
		})
		// Nothing half-applied: kernel state and conflist are unchanged.
		if st := h.k.Snapshot(); len(st.FDB) != len(before.FDB) || len(st.Routes) != len(before.Routes) {
			t.Fatalf("kernel changed under an invalid config: %+v", st)
		}
		if now, _ := os.ReadFile(filepath.Join(h.opt.CNIConfDir, install.ConflistName)); string(now) != string(conflist) {
			t.Fatalf("conflist changed under an invalid config:\n%s", now)
		}
	}
	// A valid config again: ready, and its cniVersion applied.
	cm := netconf(`{"network":"10.244.0.0/16","cniVersion":"1.1.0","backend":{"type":"vxlan","vni":1,"port":8472}}`)
	cm.ResourceVersion = "99"
	if _, err := h.c.CoreV1().ConfigMaps(config.Namespace).Update(context.Background(), cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("ready with 1.1.0", func() bool {
		data, _ := os.ReadFile(filepath.Join(h.opt.CNIConfDir, install.ConflistName))
		return h.ready() && strings.Contains(string(data), `"cniVersion": "1.1.0"`)
	})
}

func TestAgentNoConfigNotReadyNoConflist(t *testing.T) {
	h := start(t, node("n1", "172.18.0.2", ""))
	h.eventually("config reason", func() bool {
		_, reasons := h.status.Ready()
		return len(reasons) > 0 && strings.Contains(strings.Join(reasons, ";"), "ConfigMap kube-system/weft")
	})
	if _, err := os.Stat(filepath.Join(h.opt.CNIConfDir, install.ConflistName)); !os.IsNotExist(err) {
		t.Fatal("conflist written without configuration")
	}
	// ConfigMap appears: the node claims a lease (no podCIDR) and gets ready.
	if _, err := h.c.CoreV1().ConfigMaps(config.Namespace).Create(context.Background(), netconf(goodConf), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h.eventually("ready", h.ready)
	if c := h.annotations("n1")[backend.AnnoPodCIDR]; !strings.HasPrefix(c, "10.244.") {
		t.Fatalf("pod cidr %q", c)
	}
}

func TestAgentRestartAdopts(t *testing.T) {
	h := start(t, node("n1", "172.18.0.2", ""), peerNode("n2", "172.18.0.3", "10.244.2.0/24", "02:00:00:00:00:22"), netconf(goodConf))
	h.eventually("ready", h.ready)
	cidr, mac := h.annotations("n1")[backend.AnnoPodCIDR], h.annotations("n1")[vxlan.AnnoVTEPMAC]
	h.stop()
	writes := h.k.Writes
	h.status = api.NewStatus()
	h.run()
	h.eventually("ready again", h.ready)
	if a := h.annotations("n1"); a[backend.AnnoPodCIDR] != cidr || a[vxlan.AnnoVTEPMAC] != mac {
		t.Fatalf("restart changed subnet or MAC: %v", a)
	}
	if h.k.Writes != writes {
		t.Fatalf("restart wrote %d kernel objects", h.k.Writes-writes)
	}
	leases, _ := h.c.CoordinationV1().Leases("kube-system").List(context.Background(), metav1.ListOptions{})
	if len(leases.Items) != 1 {
		t.Fatalf("%d leases after restart", len(leases.Items))
	}
}

func TestAgentWaitsForChainedPlugins(t *testing.T) {
	bin := t.TempDir()
	for _, p := range []string{"weft", "weft-ipam", "bandwidth"} {
		_ = os.WriteFile(filepath.Join(bin, p), []byte("x"), 0o755)
	}
	h := &harness{t: t, k: vxlan.NewFake(map[string]int{"eth0": 1500}), g: encapguard.NewFake(), status: api.NewStatus(), dir: t.TempDir()}
	h.c = fake.NewClientset(node("n1", "172.18.0.2", "10.244.1.0/24"), netconf(goodConf))
	h.opt = Options{NodeName: "n1", CNIConfDir: filepath.Join(h.dir, "net.d"), CNIBinDir: bin, SubnetFile: filepath.Join(h.dir, "subnet.json"), ResyncInterval: 200 * time.Millisecond}
	h.run()
	h.eventually("portmap reason", func() bool {
		_, reasons := h.status.Ready()
		return len(reasons) == 1 && strings.Contains(reasons[0], "conflist: plugins [portmap] missing")
	})
	if _, err := os.Stat(filepath.Join(h.opt.CNIConfDir, install.ConflistName)); !os.IsNotExist(err) {
		t.Fatal("conflist written while portmap is missing")
	}
	_ = os.WriteFile(filepath.Join(bin, "portmap"), []byte("x"), 0o755)
	h.eventually("ready", h.ready)
}

func TestUninstall(t *testing.T) {
	h := start(t, node("n1", "172.18.0.2", ""), netconf(goodConf))
	h.eventually("ready", h.ready)
	h.stop()
	tables := &fakeTables{}
	lock := filepath.Join(t.TempDir(), "weft-ipmasq.lock")
	if err := os.WriteFile(lock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	// A Weft route out of the underlay (as a BGP backend writes) and
	// another program's route there.
	pfx, ip := netip.MustParsePrefix, netip.MustParseAddr
	foreign := route.KernelRoute{Route: route.Route{Dst: pfx("10.9.0.0/16"), Gw: ip("172.18.0.1"), Dev: "eth0"}, Protocol: 3}
	h.k.RouteKernel().Add(foreign)
	h.k.RouteKernel().Add(route.KernelRoute{Route: route.Route{Dst: pfx("10.244.7.0/24"), Gw: ip("172.18.0.7"), Dev: "eth0"}, Protocol: route.Protocol})
	err := Uninstall(context.Background(), h.opt, UninstallDeps{Deps: Deps{Client: h.c, Tables: tables, Log: slog.Default()},
		Backends: []backend.Factory{vxlan.Factory{Kernel: h.k, Guard: h.g}}, Routes: route.New(h.k, slog.Default()), MasqLock: lock})
	if err != nil {
		t.Fatal(err)
	}
	if got := h.k.RouteKernel().Routes(); len(got) != 1 || got[0] != foreign {
		t.Fatalf("routes after uninstall %+v, want only the foreign one", got)
	}
	if _, err := os.Stat(filepath.Join(h.opt.CNIConfDir, install.ConflistName)); !os.IsNotExist(err) {
		t.Fatal("conflist left")
	}
	if _, err := os.Stat(h.opt.SubnetFile); !os.IsNotExist(err) {
		t.Fatal("subnet file left")
	}
	if _, err := os.Stat(lock); !os.IsNotExist(err) {
		t.Fatal("ipMasq lock file left")
	}
	if h.k.HasDevice() {
		t.Fatal("vxlan device left")
	}
	if _, ok := h.g.Spec(vxlan.Type); ok {
		t.Fatal("encapsulation guard left")
	}
	for k := range h.annotations("n1") {
		if strings.HasPrefix(k, backend.AnnoPrefix) {
			t.Fatalf("annotation %s left", k)
		}
	}
	leases, _ := h.c.CoordinationV1().Leases("kube-system").List(context.Background(), metav1.ListOptions{})
	if len(leases.Items) != 0 {
		t.Fatalf("lease left: %v", leases.Items[0].Name)
	}
}
