package image

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/weftnet/weft/daemon/install"
)

// checkInstallCNI runs the DaemonSet's init container (command weftd
// install-cni, --cni-bin-dir=/opt/cni/bin on a host directory) and checks
// the host directory: every plugin, executable, byte for byte the image's,
// runnable on the host; a file of someone else's left alone; a second run
// changes nothing.
func checkInstallCNI(t *testing.T, ctx context.Context, img, bins string) {
	dir := t.TempDir()
	other := filepath.Join(dir, "other-plugin")
	if err := os.WriteFile(other, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func() string {
		out, err := docker(ctx, "run", "--rm", "--network", "none", "-v", dir+":/opt/cni/bin", img,
			"install-cni", "--cni-bin-dir=/opt/cni/bin")
		if err != nil {
			t.Fatalf("install-cni: %v", err)
		}
		return out
	}
	run()
	for _, name := range install.Binaries() {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("install-cni did not install %s: %v", name, err)
			continue
		}
		want, err := os.ReadFile(filepath.Join(bins, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s on the host differs from the image's /usr/local/bin/%s", name, name)
		}
		if st, err := os.Stat(filepath.Join(dir, name)); err != nil || st.Mode().Perm()&0o111 == 0 {
			t.Errorf("%s not executable on the host: %v %v", name, st.Mode(), err)
		}
		cmd := exec.CommandContext(ctx, filepath.Join(dir, name))
		cmd.Env = []string{"CNI_COMMAND=VERSION"}
		if out, err := cmd.Output(); err != nil || !strings.Contains(string(out), `"supportedVersions"`) {
			t.Errorf("installed %s does not run on the host: %q %v", name, out, err)
		}
	}
	if b, err := os.ReadFile(other); err != nil || string(b) != "#!/bin/sh\n" {
		t.Errorf("install-cni changed a file it does not own: %q %v", b, err)
	}
	before := stat(t, dir)
	run()
	if after := stat(t, dir); after != before {
		t.Errorf("a second install-cni rewrote files:\nbefore %s\nafter  %s", before, after)
	}
}

// stat lists each file's name, inode and modification time.
func stat(t *testing.T, dir string) string {
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&b, "%s:%d:%d ", e.Name(), sysIno(fi), fi.ModTime().UnixNano())
	}
	return b.String()
}

// ipScript is what weftd does to the packet filter, with the image's own
// tools and the commands internal/iptables runs (ipset restore,
// iptables-<mode>-restore --noflush, iptables-<mode>-save), in the
// container's own network namespace, for IPv4 and IPv6.
const ipScript = `set -eu
m=%[1]s
wait=; [ $m = legacy ] && wait="--wait 10"
printf 'create weft-img4 hash:net family inet\nadd weft-img4 10.244.1.0/24\ncreate weft-img6 hash:net family inet6\nadd weft-img6 fd00:1::/64\n' | ipset restore
for fam in ip ip6; do
  set=weft-img4 net=10.244.0.0/16
  [ $fam = ip6 ] && set=weft-img6 net=fd00::/48
  printf '*filter\n:WEFT-IMG - [0:0]\n-A WEFT-IMG -m set --match-set %%s src -m comment --comment "weft image test" -j ACCEPT\n-A FORWARD -j WEFT-IMG\nCOMMIT\n*nat\n:WEFT-IMG-MASQ - [0:0]\n-A WEFT-IMG-MASQ -s %%s ! -d %%s -j MASQUERADE\n-A POSTROUTING -j WEFT-IMG-MASQ\nCOMMIT\n' $set $net $net |
    ${fam}tables-$m-restore --noflush $wait
  echo "== $fam"
  ${fam}tables-$m-save -t filter
  ${fam}tables-$m-save -t nat
  ${fam}tables-$m -V
done
echo "== ipset"
ipset save
`

// checkIPTables loads rules and sets in the given iptables mode inside a
// container that has NET_ADMIN (not privileged) and its own netns, and reads
// them back.
func checkIPTables(t *testing.T, ctx context.Context, img, mode string) {
	loadModules(t)
	out, err := docker(ctx, "run", "--rm", "--network", "none", "--cap-add", "NET_ADMIN",
		"--entrypoint", "sh", img, "-c", fmt.Sprintf(ipScript, mode))
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	variant := map[string]string{"legacy": "(legacy)", "nft": "(nf_tables)"}[mode]
	for _, want := range []string{
		"-A WEFT-IMG -m set --match-set weft-img4 src -m comment --comment \"weft image test\" -j ACCEPT",
		"-A WEFT-IMG -m set --match-set weft-img6 src -m comment --comment \"weft image test\" -j ACCEPT",
		"-A FORWARD -j WEFT-IMG",
		"-A WEFT-IMG-MASQ -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE",
		"-A WEFT-IMG-MASQ -s fd00::/48 ! -d fd00::/48 -j MASQUERADE",
		"-A POSTROUTING -j WEFT-IMG-MASQ",
		"add weft-img4 10.244.1.0/24",
		"add weft-img6 fd00:1::/64",
		"iptables v1.8", "ip6tables v1.8", variant,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in the container's output:\n%s", want, out)
		}
	}
}

// loadModules loads on the host the kernel modules the rules above need (a
// container cannot; the DaemonSet's privileged pod mounts /lib/modules).
func loadModules(t *testing.T) {
	if _, err := exec.LookPath("modprobe"); err != nil {
		return // no kmod: the modules are built in or already loaded
	}
	for _, m := range []string{"ip_set", "ip_set_hash_net", "xt_set", "xt_comment", "xt_MASQUERADE",
		"iptable_filter", "iptable_nat", "ip6table_filter", "ip6table_nat", "nf_tables", "nft_compat"} {
		if out, err := exec.Command("modprobe", m).CombinedOutput(); err != nil {
			t.Logf("modprobe %s: %v %s (may be built in)", m, err, out)
		}
	}
}

func sysIno(fi os.FileInfo) uint64 { return fi.Sys().(*syscall.Stat_t).Ino }
