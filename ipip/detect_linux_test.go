package ipip

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/weftnet/weft/internal/testutil"
)

// TestDetectMatchesKernel: Detect on this host agrees with the kernel:
// creating a throwaway ipip link in a fresh namespace fails exactly when
// Detect says Userspace (this machine: no ipip module, so it fails).
func TestDetectMatchesKernel(t *testing.T) {
	testutil.RequireRoot(t)
	r, err := HostRoots()
	if err != nil {
		t.Fatal(err)
	}
	d := Detect(r)
	n := testutil.NewNS(t)
	var addErr error
	_ = n.Do(func(ns.NetNS) error {
		addErr = netlink.LinkAdd(&netlink.Iptun{LinkAttrs: netlink.LinkAttrs{Name: "ipip-probe"}})
		return nil
	})
	t.Logf("detect: %+v; ipip link add: %v", d, addErr)
	if (addErr == nil) != (d.Mode == Kernel) {
		t.Fatalf("Detect says %s (%s) but creating an ipip link gave %v", d.Mode, d.Reason, addErr)
	}
}
