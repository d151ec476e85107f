package cluster

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
)

// netnsExists reports whether /run/netns/<name> is a mounted namespace.
func netnsExists(name string) bool {
	p := filepath.Join(NetnsDir, name)
	ino, err := nsInode(p)
	if err != nil {
		return false
	}
	dirIno, err := nsInode(NetnsDir)
	return err == nil && ino != dirIno && isMountPoint(p)
}

// mountInfo is one line of /proc/self/mountinfo (the fields we use).
type mountInfo struct {
	ID, Parent  string
	Root, Point string
	Optional    string // propagation tags, e.g. "shared:5"
}

func mounts() ([]mountInfo, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	defer f.Close()
	var out []mountInfo
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 7 {
			continue
		}
		m := mountInfo{ID: fields[0], Parent: fields[1], Root: unescapeMount(fields[3]), Point: unescapeMount(fields[4])}
		var opt []string
		for _, f := range fields[6:] {
			if f == "-" {
				break
			}
			opt = append(opt, f)
		}
		m.Optional = strings.Join(opt, " ")
		out = append(out, m)
	}
	return out, sc.Err()
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// isMountPoint reports whether path is a mount point in our mount namespace.
func isMountPoint(path string) bool {
	ms, err := mounts()
	if err != nil {
		return false
	}
	for _, m := range ms {
		if m.Point == path {
			return true
		}
	}
	return false
}

// checkUnderlayFree fails when the host already routes an underlay range
// through something that is not ours (e.g. a docker network).
func checkUnderlayFree(ctx context.Context, subnets int) error {
	out, err := output(ctx, "ip", "-j", "-4", "route", "show", "table", "all")
	if err != nil {
		return err
	}
	var routes []struct {
		Dst string `json:"dst"`
		Dev string `json:"dev"`
	}
	if err := json.Unmarshal([]byte(out), &routes); err != nil {
		return fmt.Errorf("decode routes: %w", err)
	}
	var under []netip.Prefix
	for _, u := range underlays[:subnets] {
		under = append(under, netip.MustParsePrefix(u.cidr))
	}
	for _, r := range routes {
		if r.Dst == "" || r.Dst == "default" || r.Dev == HostVeth {
			continue
		}
		p, err := netip.ParsePrefix(r.Dst)
		if err != nil {
			if a, aerr := netip.ParseAddr(r.Dst); aerr == nil {
				p = netip.PrefixFrom(a, a.BitLen())
			} else {
				continue
			}
		}
		for _, u := range under {
			if p.Overlaps(u) {
				return fmt.Errorf("host already routes %s via %s, which overlaps the underlay %s", r.Dst, r.Dev, u)
			}
		}
	}
	return nil
}

// ensureNetns creates a named network namespace with lo up.
func ensureNetns(ctx context.Context, name string) error {
	if !netnsExists(name) {
		if err := run(ctx, "ip", "netns", "add", name); err != nil {
			return err
		}
	}
	return run(ctx, "ip", "-n", name, "link", "set", "lo", "up")
}

// ensureUnderlay creates the underlay namespace with its bridge and the
// host-side veth (the only link between the cluster and the host).
func ensureUnderlay(ctx context.Context) error {
	if err := ensureNetns(ctx, UnderlayNS); err != nil {
		return err
	}
	if run(ctx, "ip", "-n", UnderlayNS, "link", "show", UnderlayBr) != nil {
		if err := run(ctx, "ip", "-n", UnderlayNS, "link", "add", UnderlayBr, "type", "bridge"); err != nil {
			return err
		}
	}
	if err := run(ctx, "ip", "-n", UnderlayNS, "link", "set", UnderlayBr, "up"); err != nil {
		return err
	}
	peer := "u-host"
	if run(ctx, "ip", "link", "show", HostVeth) != nil {
		if err := run(ctx, "ip", "link", "add", HostVeth, "type", "veth", "peer", "name", peer, "netns", UnderlayNS); err != nil {
			return err
		}
	}
	// No IPv6 on the host side: the host sends nothing into the cluster by itself.
	_ = os.WriteFile("/proc/sys/net/ipv6/conf/"+HostVeth+"/disable_ipv6", []byte("1"), 0o644)
	cmds := [][]string{
		{"ip", "addr", "replace", HostIP + "/16", "dev", HostVeth},
		{"ip", "link", "set", HostVeth, "up"},
		{"ip", "-n", UnderlayNS, "link", "set", peer, "master", UnderlayBr},
		{"ip", "-n", UnderlayNS, "link", "set", peer, "up"},
	}
	for _, cmd := range cmds {
		if err := run(ctx, cmd[0], cmd[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// attach creates namespace ns and plugs its eth0 (addr/16) into the
// underlay bridge. No default route: nothing leaves the underlay.
func attach(ctx context.Context, ns string, addr netip.Addr) error {
	return attachTo(ctx, ns, 0, "eth0", addr)
}

// attachTo creates namespace ns and plugs its link ifname (addr/16) into
// the bridge of underlay subnet s.
func attachTo(ctx context.Context, ns string, s int, ifname string, addr netip.Addr) error {
	if err := ensureNetns(ctx, ns); err != nil {
		return err
	}
	peer := "u-" + strings.TrimPrefix(ns, Prefix)
	if ifname != "eth0" {
		peer = "u" + strings.TrimPrefix(ifname, "eth") + "-" + strings.TrimPrefix(ns, Prefix)
	}
	if len(peer) > 15 {
		return fmt.Errorf("namespace name %q too long for a link name", ns)
	}
	if run(ctx, "ip", "-n", ns, "link", "show", ifname) != nil {
		_ = run(ctx, "ip", "-n", UnderlayNS, "link", "del", peer) // half-made pair
		if err := run(ctx, "ip", "-n", UnderlayNS, "link", "add", peer, "type", "veth", "peer", "name", ifname, "netns", ns); err != nil {
			return err
		}
	}
	cmds := [][]string{
		{"ip", "-n", UnderlayNS, "link", "set", peer, "master", underlays[s].bridge},
		{"ip", "-n", UnderlayNS, "link", "set", peer, "up"},
		{"ip", "-n", ns, "addr", "replace", addr.String() + "/16", "dev", ifname},
		{"ip", "-n", ns, "link", "set", ifname, "up"},
	}
	for _, cmd := range cmds {
		if err := run(ctx, cmd[0], cmd[1:]...); err != nil {
			return err
		}
	}
	return nil
}

// ourNetns lists the namespaces under /run/netns that the cluster made.
func ourNetns() ([]string, error) {
	entries, err := os.ReadDir(NetnsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", NetnsDir, err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), Prefix) || strings.HasPrefix(e.Name(), PodNetnsPref) {
			out = append(out, e.Name())
		}
	}
	return out, nil
}
