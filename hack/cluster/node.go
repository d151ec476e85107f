package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

// nodeDirName maps a node path to its per-node directory name.
func nodeDirName(p string) string {
	return strings.ReplaceAll(strings.Trim(p, "/"), "/", "-")
}

// NodeRoot is where node n's private copies of nodeDirs live on the host:
// e.g. NodeRoot(n)/etc-cni-net.d is the node's /etc/cni/net.d.
func (c *Cluster) NodeRoot(n string) string { return c.nodeDir(n) }

// NodePath returns the host path backing node path p (one of nodeDirs or below).
func (c *Cluster) NodePath(node, p string) string {
	for _, d := range nodeDirs {
		if p == d || strings.HasPrefix(p, d+"/") {
			return filepath.Join(c.nodeDir(node), nodeDirName(d), strings.TrimPrefix(p, d))
		}
	}
	return ""
}

// ensureHostDirs creates the mount points the node mount namespaces need
// on the host and records what it created (Down removes those).
func (c *Cluster) ensureHostDirs(st *state) error {
	for _, d := range nodeDirs {
		var missing []string
		for p := d; p != "/" && p != "."; p = filepath.Dir(p) {
			if _, err := os.Lstat(p); err == nil {
				break
			}
			missing = append(missing, p)
		}
		for i := len(missing) - 1; i >= 0; i-- {
			if err := os.Mkdir(missing[i], 0o755); err != nil && !errors.Is(err, os.ErrExist) {
				return fmt.Errorf("create mount point %s: %w", missing[i], err)
			}
			st.CreatedDirs = append(st.CreatedDirs, missing[i])
		}
		if len(missing) > 0 {
			if err := c.writeState(st); err != nil {
				return err
			}
		}
	}
	return nil
}

// ensureMntDir makes <state>/mnt a private mount, as persisted mount
// namespace files require.
func (c *Cluster) ensureMntDir(ctx context.Context) error {
	d := c.mntDir()
	if err := os.MkdirAll(d, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", d, err)
	}
	if isMountPoint(d) {
		return nil
	}
	if err := run(ctx, "mount", "--bind", d, d); err != nil {
		return err
	}
	return run(ctx, "mount", "--make-private", d)
}

// ensureNodeMounts creates node n's persisted mount namespace: private
// copies of / (and /sys, remounted for the node's netns) with the node's
// own directories bound over the production paths (including /run/netns,
// so the node's pod namespaces stay on the node).
func (c *Cluster) ensureNodeMounts(ctx context.Context, n string) error {
	file := filepath.Join(c.mntDir(), n)
	if isMountPoint(file) {
		return nil
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	script.WriteString("mount --make-private \"$(findmnt -n -o TARGET -T /sys)\"\n")
	script.WriteString("mount -t sysfs sysfs /sys\n")
	for _, d := range nodeDirs {
		src := filepath.Join(c.nodeDir(n), nodeDirName(d))
		if err := os.MkdirAll(src, 0o755); err != nil {
			return fmt.Errorf("create node dir %s: %w", src, err)
		}
		fmt.Fprintf(&script, "mount --make-private \"$(findmnt -n -o TARGET -T %q)\"\n", d)
		fmt.Fprintf(&script, "mount --bind %q %q\n", src, d)
	}
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		return fmt.Errorf("create mount namespace file: %w", err)
	}
	cmd := exec.CommandContext(ctx, "nsenter", "--net="+filepath.Join(NetnsDir, n), "--",
		"unshare", "--mount="+file, "--propagation", "unchanged", "sh", "-c", script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = run(ctx, "umount", file)
		_ = os.Remove(file)
		return fmt.Errorf("set up mount namespace of %s: %w: %s", n, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// nodeemuFlags returns the flags the built node emulator accepts, so the
// launcher passes only what it understands.
func nodeemuFlags(ctx context.Context, bin string) map[string]bool {
	out, _ := exec.CommandContext(ctx, bin, "-h").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+--?([a-zA-Z0-9][a-zA-Z0-9-]*)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	return flags
}

// startNodeemu starts node i's emulator in its network and mount namespaces.
func (c *Cluster) startNodeemu(ctx context.Context, i int, flags map[string]bool, rootfs string) error {
	n := NodeName(i)
	dir := c.nodeDir(n)
	args := []string{c.bin("nodeemu"),
		"--kubeconfig", filepath.Join(dir, "kubeconfig"),
		"--node-name", n,
		"--node-ip", NodeIP(i).String(),
		"--state-dir", filepath.Join(dir, "state"),
	}
	opt := map[string]string{
		// Weft's image, then the cache itself (kube-proxy, coredns,
		// testserver) stand for the images pods name.
		"image-bin-dir":  c.bin("weft") + ":" + c.opt.BinDir,
		"api-host":       ControlIP,
		"api-port":       APIPort,
		"ca-cert":        c.pki().path("ca.crt"),
		"log-dir":        c.logDir(),
		"cluster-dns":    DNSServiceIP,
		"cluster-domain": ClusterDomain,
		"pod-programs":   PodPrograms,
	}
	for _, k := range []string{"image-bin-dir", "api-host", "api-port", "ca-cert", "cluster-dns", "cluster-domain", "pod-programs"} {
		if flags[k] {
			args = append(args, "--"+k, opt[k])
		}
	}
	if rootfs != "" {
		args = append(args, "--image-rootfs", rootfs)
	}
	return c.start(procSpec{
		Name: "nodeemu-" + n, Argv: args, Netns: n, Mntns: filepath.Join(c.mntDir(), n),
	})
}
