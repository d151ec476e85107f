package policy

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/testutil"
)

// The sysctl is per network namespace: switching it on in a throwaway
// namespace leaves the host's value alone.
func TestEnsureBridgeNetfilter(t *testing.T) {
	n := testutil.NewNS(t)
	host, _ := os.ReadFile(brNFCallIptables) // empty if br_netfilter is not loaded yet
	err := n.Do(func(ns.NetNS) error {
		if len(host) > 0 {
			if err := os.WriteFile(brNFCallIptables, []byte("0\n"), 0o644); err != nil {
				return err
			}
		}
		if err := EnsureBridgeNetfilter(context.Background()); err != nil {
			return err
		}
		got, err := os.ReadFile(brNFCallIptables)
		if err != nil {
			return err
		}
		if strings.TrimSpace(string(got)) != "1" {
			t.Errorf("not enabled in the namespace: %q", got)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(brNFCallIptables)
	if len(host) > 0 && string(after) != string(host) {
		t.Errorf("host value changed: %q -> %q", host, after)
	}
}
