package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// staticConflist is the fallback network config used until weftd (from
// manifests/weft.yaml) writes its own: the weft plugin with weft-ipam
// allocating from the node subnet file, as weftd will.
const staticConflist = `{
  "cniVersion": "1.0.0",
  "name": "weft",
  "plugins": [
    {
      "type": "weft",
      "bridge": "weft0",
      "isDefaultGateway": true,
      "ipam": {
        "type": "weft-ipam",
        "subnetFile": "/run/weft/subnet.json"
      }
    }
  ]
}
`

// installStaticPlugins copies the weft plugins and the reference loopback
// into every node's /opt/cni/bin and writes the conflist (the node is
// network-ready at once; ADDs before the subnet file exists fail and are
// retried by the node emulator, as kubelet would).
func (c *Cluster) installStaticPlugins() error {
	src := c.bin("cni")
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("read plugin dir %s (run hack/localcluster build): %w", src, err)
	}
	if len(entries) == 0 {
		return fmt.Errorf("no plugins in %s", src)
	}
	for i := 1; i <= c.opt.Nodes; i++ {
		dst := c.NodePath(NodeName(i), "/opt/cni/bin")
		for _, e := range entries {
			if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()), 0o755); err != nil {
				return err
			}
		}
		if err := writeAtomic(c.NodePath(NodeName(i), "/etc/cni/net.d/10-weft.conflist"), []byte(staticConflist), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeStaticCNI writes node n's /run/weft/subnet.json (internal/subnetfile
// format) from its podCIDR, and its conflist.
func (c *Cluster) writeStaticCNI(n, podCIDR string) error {
	subnet, err := netip.ParsePrefix(podCIDR)
	if err != nil {
		return fmt.Errorf("node %s podCIDR %q: %w", n, podCIDR, err)
	}
	sf := struct {
		Network string `json:"network"`
		Subnet  string `json:"subnet"`
		MTU     int    `json:"mtu"`
	}{ClusterCIDR, subnet.Masked().String(), 1500}
	data, err := json.Marshal(sf)
	if err != nil {
		return fmt.Errorf("encode subnet file: %w", err)
	}
	if err := writeAtomic(c.NodePath(n, "/run/weft/subnet.json"), data, 0o644); err != nil {
		return err
	}
	return writeAtomic(c.NodePath(n, "/etc/cni/net.d/10-weft.conflist"), []byte(staticConflist), 0o644)
}

func writeAtomic(path string, data []byte, mode os.FileMode) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	return os.Rename(tmp, dst)
}

// applyManifest applies manifests/weft.yaml with kubectl (admin); the node
// emulators then run weftd's DaemonSet pods as node processes.
func (c *Cluster) applyManifest(ctx context.Context) error {
	out, err := output(ctx, c.bin("kubectl"), "--kubeconfig", c.Kubeconfig(), "apply", "-f", c.manifestPath())
	if err != nil {
		return fmt.Errorf("apply %s: %w", c.manifestPath(), err)
	}
	c.log.Info("applied manifest", "output", strings.TrimSpace(out))
	return nil
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
