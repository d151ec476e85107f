package nodeemu

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// ParseImageRootfs decodes "repo=DIR,repo=DIR": hostNetwork containers
// whose image repository is listed run inside DIR, an image's exported
// root file system, instead of from the image bin dir on the node.
func ParseImageRootfs(s string) (map[string]string, error) {
	m, err := parseImageMap(s, "image rootfs %q: want IMAGE=/ABSOLUTE/DIR", filepath.IsAbs)
	for k, v := range m {
		m[k] = filepath.Clean(v)
	}
	return m, err
}

// imageDefaultPath is the PATH of a container whose spec sets none (the
// Debian-based image's, and Docker's default).
const imageDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// rootfsScript is run by sh inside a fresh private mount namespace (of the
// node's): it makes the image's root file system a read-only mount with a
// tmpfs /run and /tmp of the container's own, binds the node's /proc,
// /sys and /dev, and binds each of the container's volume mounts (which
// the volume writer has already materialized at their path on the node:
// hostPath volumes are the node's paths, the ServiceAccount token is in
// the node's /var/run/secrets/...) at the same path inside, resolving
// symlinks of the image (/var/run -> /run) inside the image. Then it
// execs the command chrooted, so its pid stays the container's.
const rootfsScript = `set -e
R=$1; shift
M=$1; shift
mount --bind "$R" "$R"
mount --make-private "$R"
mount -t tmpfs -o mode=0755 weft-run "$R/run"
mount -t tmpfs -o mode=1777 weft-tmp "$R/tmp"
for d in proc sys dev; do mount --rbind "/$d" "$R/$d"; done
IFS='
'
for m in $M; do
  # A hostPath the node lacks (/lib/modules here) is skipped, as the node
  # emulator does without an image.
  [ -e "$m" ] || { echo "image rootfs: $m missing on the node, not mounted" >&2; continue; }
  t=$(chroot "$R" realpath -m "$m")
  if [ -d "$m" ]; then mkdir -p "$R$t"; else mkdir -p "$(dirname "$R$t")"; [ -e "$R$t" ] || : >"$R$t"; fi
  mount --rbind "$m" "$R$t"
done
mount -o remount,bind,ro "$R"
exec chroot "$R" "$@"
`

// rootfsCommand runs argv of container c inside the image root file
// system dir, through unshare (a private mount namespace) and the script.
func rootfsCommand(dir string, c *v1.Container, argv []string) (*exec.Cmd, error) {
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		return nil, fmt.Errorf("image rootfs needs unshare: %w", err)
	}
	var mounts []string
	for _, m := range c.VolumeMounts {
		p := filepath.Clean(m.MountPath)
		if strings.Contains(p, "\n") || p == "/" {
			return nil, fmt.Errorf("volume %s: mount path %q not supported with an image rootfs", m.Name, m.MountPath)
		}
		mounts = append(mounts, p)
	}
	args := []string{"--mount", "--propagation", "private", "--", "sh", "-c", rootfsScript, "sh", dir, strings.Join(mounts, "\n")}
	return exec.Command(unshare, append(args, argv...)...), nil
}

// withPath adds the image's default PATH when env has none, as a container
// runtime does from the image config.
func withPath(env []string) []string {
	for _, kv := range env {
		if strings.HasPrefix(kv, "PATH=") {
			return env
		}
	}
	return append(env, "PATH="+imageDefaultPath)
}
