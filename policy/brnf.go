package policy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

const brNFCallIptables = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// EnsureBridgeNetfilter makes bridged IPv4 traffic traverse iptables in the
// calling thread's network namespace (the sysctl is per namespace on
// kernels >= 5.3), loading br_netfilter if needed. Without it, pods on the
// same node talk across the bridge without meeting any policy; the error
// says so and must be reported.
func EnsureBridgeNetfilter(ctx context.Context) error {
	return ensureBridgeNetfilterAt(ctx, "")
}

// ensureBridgeNetfilterAt is EnsureBridgeNetfilter with the sysctl at path
// ("" = the kernel's).
func ensureBridgeNetfilterAt(ctx context.Context, path string) error {
	if path == "" {
		path = brNFCallIptables
	}
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		out, merr := exec.CommandContext(ctx, "modprobe", "br_netfilter").CombinedOutput()
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("br_netfilter not available (modprobe: %v %s): same-node pod traffic is not policed",
				merr, strings.TrimSpace(string(out)))
		}
	}
	cur, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("read %s: %w: same-node pod traffic may not be policed", path, err)
	}
	if strings.TrimSpace(string(cur)) == "1" {
		return nil
	}
	if err := os.WriteFile(path, []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable bridge-nf-call-iptables: %w: same-node pod traffic is not policed", err)
	}
	return nil
}
