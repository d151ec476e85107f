package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// Down removes everything the cluster made: processes, pod and node
// namespaces, links, mounts, host mount points and state (the binary cache
// and the logs of the last run stay). It is idempotent and works from
// whatever is left after a crash: it finds things by pid file, by the
// wl-/wlp- name prefixes and by namespace membership.
func (c *Cluster) Down(ctx context.Context) error {
	if os.Geteuid() != 0 {
		return errors.New("the local cluster needs root")
	}
	st, err := c.readState()
	if err != nil {
		st = &state{}
	}
	var errs []error

	// 1. Processes we started, then anything still inside our namespaces.
	var pids []int
	if entries, err := os.ReadDir(c.pidDir()); err == nil {
		for _, e := range entries {
			name := strings.TrimSuffix(e.Name(), ".pid")
			if pid, ok := c.running(name); ok {
				pids = append(pids, pid)
			}
		}
	}
	stopPids(ctx, pids, 15*time.Second)
	netIno, mntIno := c.ourNamespaceInodes()
	if left := pidsInNamespaces(netIno, mntIno); len(left) > 0 {
		c.log.Info("stopping leftover processes in cluster namespaces", "pids", left)
		stopPids(ctx, left, 5*time.Second)
	}
	_ = os.RemoveAll(c.pidDir())

	// 2. Mounts under the state dir (mount namespace files, the private
	// mnt dir), deepest first.
	if err := c.unmountUnder(ctx, c.opt.StateDir); err != nil {
		errs = append(errs, err)
	}

	// 3. Network namespaces (pod ones first) and the host veth.
	names, err := ourNetns()
	if err != nil {
		errs = append(errs, err)
	}
	sort.Slice(names, func(i, j int) bool {
		return strings.HasPrefix(names[i], PodNetnsPref) && !strings.HasPrefix(names[j], PodNetnsPref)
	})
	for _, n := range names {
		p := filepath.Join(NetnsDir, n)
		if isMountPoint(p) {
			if err := run(ctx, "umount", p); err != nil {
				if err2 := run(ctx, "umount", "-l", p); err2 != nil {
					errs = append(errs, err2)
				}
			}
		}
		if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
		}
	}
	if run(ctx, "ip", "link", "show", HostVeth) == nil {
		if err := run(ctx, "ip", "link", "del", HostVeth); err != nil {
			errs = append(errs, err)
		}
	}

	// 4. Host mount points we created, deepest first, if empty.
	for i := len(st.CreatedDirs) - 1; i >= 0; i-- {
		d := st.CreatedDirs[i]
		if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove mount point %s we created: %w", d, err))
		}
	}

	// 5. /run/netns: unmount it if we made it a mount point and nobody
	// else has a namespace there now.
	if st.MadeRunNetnsMount && isMountPoint(NetnsDir) {
		if entries, err := os.ReadDir(NetnsDir); err == nil && len(entries) == 0 {
			if err := run(ctx, "umount", NetnsDir); err != nil {
				errs = append(errs, err)
			}
		} else {
			c.log.Info("leaving /run/netns mounted: other namespaces live there", "count", len(entries))
		}
	}
	if st.MadeRunNetnsDir && !isMountPoint(NetnsDir) {
		_ = os.Remove(NetnsDir) // only if empty
	}

	// 6. State, except the binary cache and the logs.
	if entries, err := os.ReadDir(c.opt.StateDir); err == nil {
		for _, e := range entries {
			p := filepath.Join(c.opt.StateDir, e.Name())
			if p == c.opt.BinDir || p == c.logDir() {
				continue
			}
			if err := os.RemoveAll(p); err != nil {
				errs = append(errs, fmt.Errorf("remove %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}

// ourNamespaceInodes returns the inodes of the cluster's network
// namespaces and node mount namespaces.
func (c *Cluster) ourNamespaceInodes() (netIno, mntIno map[uint64]bool) {
	netIno, mntIno = map[uint64]bool{}, map[uint64]bool{}
	dirIno, _ := nsInode(NetnsDir)
	if names, err := ourNetns(); err == nil {
		for _, n := range names {
			if ino, err := nsInode(filepath.Join(NetnsDir, n)); err == nil && ino != dirIno && isMountPoint(filepath.Join(NetnsDir, n)) {
				netIno[ino] = true
			}
		}
	}
	if entries, err := os.ReadDir(c.mntDir()); err == nil {
		for _, e := range entries {
			p := filepath.Join(c.mntDir(), e.Name())
			if !isMountPoint(p) {
				continue
			}
			if ino, err := nsInode(p); err == nil {
				mntIno[ino] = true
			}
		}
	}
	return netIno, mntIno
}

// unmountUnder unmounts every mount point at or below dir, deepest first.
func (c *Cluster) unmountUnder(ctx context.Context, dir string) error {
	ms, err := mounts()
	if err != nil {
		return err
	}
	var points []string
	for _, m := range ms {
		if m.Point == dir || strings.HasPrefix(m.Point, dir+"/") {
			points = append(points, m.Point)
		}
	}
	sort.Slice(points, func(i, j int) bool { return len(points[i]) > len(points[j]) })
	var errs []error
	for _, p := range points {
		if err := run(ctx, "umount", p); err != nil {
			if err2 := run(ctx, "umount", "-l", p); err2 != nil {
				errs = append(errs, err2)
			}
		}
	}
	return errors.Join(errs...)
}
