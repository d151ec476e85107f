package policy

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/weftnet/weft/internal/podnet"
)

// vethsThatVanish lists the given veths on the first call and, when gone
// is set, none afterwards: a DEL that removed the pod while weftd was
// rebuilding its record.
type vethsThatVanish struct {
	mu    sync.Mutex
	veths []string
	gone  bool
	calls int
}

func (v *vethsThatVanish) HostVeths() ([]string, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.calls++
	if v.calls > 1 && v.gone {
		return nil, nil
	}
	return v.veths, nil
}

func (v *vethsThatVanish) called() int { v.mu.Lock(); defer v.mu.Unlock(); return v.calls }

type staticAttachments []Attachment

func (s staticAttachments) Attachments(context.Context) ([]Attachment, error) { return s, nil }

// A record rebuilt for a veth that a concurrent DEL deleted must not stay
// behind (it would hold an address IPAM has released); one whose veth is
// still there stays.
func TestRebuildDropsRecordOfDeletedVeth(t *testing.T) {
	for _, gone := range []bool{true, false} {
		dir := t.TempDir()
		veth := podnet.HostVethName("c1", "eth0")
		lister := &vethsThatVanish{veths: []string{veth}, gone: gone}
		client := fake.NewClientset()
		pod := runningPod("a", "web", "uid-web", "n1", "10.244.1.2")
		if _, err := client.CoreV1().Pods("a").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		atts := staticAttachments{{ContainerID: "c1", IfName: "eth0", IPs: []netip.Addr{netip.MustParseAddr("10.244.1.2")}}}
		h := newRecHealth()
		startController(t, client, ControllerConfig{NodeName: "n1", EndpointDir: dir, Dataplane: NewFakeDataplane(),
			MinSyncInterval: 5 * time.Millisecond, Health: h,
			Rebuild: &EndpointRebuild{Attachments: atts, Veths: lister}})
		deadline := time.Now().Add(5 * time.Second)
		for !h.met(CondSync) && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if !h.met(CondSync) {
			t.Fatal("controller never synced")
		}
		_, err := os.Stat(filepath.Join(dir, veth+".json"))
		switch {
		case gone && err == nil:
			t.Errorf("a record of a veth deleted during the rebuild was left in %s (veths listed %d times)", dir, lister.called())
		case !gone && err != nil:
			t.Errorf("the rebuilt record of a live veth is missing: %v", err)
		}
	}
}
