// Package disk is the on-disk store.Store of weft-ipam.
//
// Layout: one directory per network (the data directory). It holds a single
// state file, weft-ipam.json, with every allocation and the last reserved
// address of each range set. Writers take an exclusive flock(2) on the
// directory itself (so no lock file is ever created or left behind), read
// the state file, and replace it by writing .weft-ipam.json.tmp and
// renaming it over the old file. rename(2) is atomic, so a process killed at
// any point leaves either the old or the new state: an allocation is fully
// recorded or absent. Readers (CHECK, STATUS) take a shared lock.
//
// An operation costs one lock, one read and, when something changed, one
// write and one rename; no directory scan. Files are not fsynced by default
// (Options.Sync turns it on): the state must survive plugin crashes and
// restarts, while a host crash restarts every pod anyway; ext4 orders the
// data of a file replaced by rename before the rename itself.
//
// When the state file does not exist but the directory holds host-local's
// files (one file per address, named by the address, holding
// "<container ID>\r\n<ifname>", and last_reserved_ip.<N>), they are imported
// so a network can switch from host-local to weft-ipam with running pods.
// The host-local files are removed once the imported state is written.
package disk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/ipam/store"
)

// File names inside a data directory.
const (
	StateFile = "weft-ipam.json"
	tmpFile   = ".weft-ipam.json.tmp"
)

// Options tune the disk store.
type Options struct {
	// Sync fsyncs the state file before renaming it into place.
	Sync bool
}

// Opener opens disk stores.
type Opener struct {
	Options Options
}

// Open implements store.Opener. It does not touch the disk.
func (o Opener) Open(dataDir string) (store.Store, error) {
	if dataDir == "" {
		return nil, errors.New("empty data directory")
	}
	return &Store{dir: dataDir, opts: o.Options}, nil
}

// Store is the store of one data directory.
type Store struct {
	dir  string
	opts Options
}

// New returns the store of dir.
func New(dir string, opts Options) *Store {
	return &Store{dir: dir, opts: opts}
}

// Dir returns the data directory.
func (s *Store) Dir() string { return s.dir }

// Update implements store.Store.
func (s *Store) Update(ctx context.Context, fn store.UpdateFunc) error {
	fd, err := lockDir(ctx, s.dir, unix.LOCK_EX)
	if errors.Is(err, fs.ErrNotExist) {
		// Nothing stored yet: only create the directory if fn changes
		// something (a DEL or GC on an unused network creates nothing).
		changed, ferr := fn(&store.State{})
		if ferr != nil || !changed {
			return ferr
		}
		if err := os.MkdirAll(s.dir, 0o755); err != nil {
			return fmt.Errorf("create data dir: %w", err)
		}
		fd, err = lockDir(ctx, s.dir, unix.LOCK_EX)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd) // releases the lock
	st, imported, err := s.read()
	if err != nil {
		return err
	}
	changed, err := fn(st)
	if err != nil {
		return err
	}
	if !changed && len(imported) == 0 {
		return nil
	}
	if err := s.write(st); err != nil {
		return err
	}
	for _, name := range imported {
		_ = os.Remove(filepath.Join(s.dir, name))
	}
	return nil
}

// View implements store.Store.
func (s *Store) View(ctx context.Context, fn func(*store.State) error) error {
	fd, err := lockDir(ctx, s.dir, unix.LOCK_SH)
	if errors.Is(err, fs.ErrNotExist) {
		return fn(&store.State{})
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	st, _, err := s.read()
	if err != nil {
		return err
	}
	return fn(st)
}

// lockDir opens dir and flocks it. The lock lives as long as the returned
// descriptor. Blocking waits honour ctx.
func lockDir(ctx context.Context, dir string, how int) (int, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open data dir %s: %w", dir, err)
	}
	err = flockRetry(fd, how|unix.LOCK_NB)
	if err == nil {
		return fd, nil
	}
	if !errors.Is(err, unix.EWOULDBLOCK) {
		unix.Close(fd)
		return -1, fmt.Errorf("lock data dir %s: %w", dir, err)
	}
	if ctx.Done() == nil {
		if err := flockRetry(fd, how); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("lock data dir %s: %w", dir, err)
		}
		return fd, nil
	}
	done := make(chan error, 1)
	go func() { done <- flockRetry(fd, how) }()
	select {
	case err := <-done:
		if err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("lock data dir %s: %w", dir, err)
		}
		return fd, nil
	case <-ctx.Done():
		// The waiter owns fd now: it closes it (dropping the lock, if it
		// ever gets it) once flock returns.
		go func() { <-done; unix.Close(fd) }()
		return -1, fmt.Errorf("lock data dir %s: %w", dir, ctx.Err())
	}
}

func flockRetry(fd, how int) error {
	for {
		err := unix.Flock(fd, how)
		if err != unix.EINTR {
			return err
		}
	}
}

// read loads the state. A missing state file yields an empty state (or the
// imported host-local state, whose file names are returned). An unreadable
// state file is moved aside and treated as empty, with a warning.
func (s *Store) read() (*store.State, []string, error) {
	path := filepath.Join(s.dir, StateFile)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return s.importHostLocal()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", path, err)
	}
	st := &store.State{}
	if err := json.Unmarshal(data, st); err != nil {
		aside := fmt.Sprintf("%s.corrupt-%d", path, time.Now().UnixNano())
		slog.Warn("weft-ipam: unreadable state file moved aside, starting empty",
			"path", path, "movedTo", aside, "err", err)
		if rerr := os.Rename(path, aside); rerr != nil {
			return nil, nil, fmt.Errorf("decode %s: %w (and moving it aside failed: %v)", path, err, rerr)
		}
		return &store.State{}, nil, nil
	}
	return st, nil, nil
}

// write replaces the state file atomically.
func (s *Store) write(st *store.State) error {
	data, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("encode state: %w", err)
	}
	data = append(data, '\n')
	tmp := filepath.Join(s.dir, tmpFile)
	fd, err := unix.Open(tmp, unix.O_WRONLY|unix.O_CREAT|unix.O_TRUNC|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := writeAll(fd, data); err != nil {
		unix.Close(fd)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if s.opts.Sync {
		if err := unix.Fsync(fd); err != nil {
			unix.Close(fd)
			return fmt.Errorf("fsync %s: %w", tmp, err)
		}
	}
	if err := unix.Close(fd); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := unix.Rename(tmp, filepath.Join(s.dir, StateFile)); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// importHostLocal reads host-local's per-address files, if any.
func (s *Store) importHostLocal() (*store.State, []string, error) {
	st := &store.State{}
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, nil, fmt.Errorf("scan data dir %s: %w", s.dir, err)
	}
	var names []string
	for _, e := range entries {
		name := e.Name()
		if !e.Type().IsRegular() {
			continue
		}
		if idx, ok := strings.CutPrefix(name, "last_reserved_ip."); ok {
			i, err := strconv.Atoi(idx)
			data, rerr := os.ReadFile(filepath.Join(s.dir, name))
			if err != nil || rerr != nil || i < 0 || i > 64 {
				continue
			}
			if a, err := parseAddr(strings.TrimSpace(string(data))); err == nil {
				st.SetLast(i, a)
				names = append(names, name)
			}
			continue
		}
		ip, err := parseAddr(name)
		if err != nil {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.dir, name))
		if err != nil {
			continue
		}
		id, ifname, found := strings.Cut(strings.TrimSpace(string(data)), "\r\n")
		if !found {
			ifname = "eth0" // host-local before v0.9 stored only the ID
		}
		st.Allocations = append(st.Allocations, store.Allocation{
			IP: ip, ContainerID: strings.TrimSpace(id), IfName: strings.TrimSpace(ifname),
		})
		names = append(names, name)
	}
	return st, names, nil
}

func parseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, err
	}
	return a.Unmap(), nil
}
