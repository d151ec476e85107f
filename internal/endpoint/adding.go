package endpoint

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/containernetworking/cni/pkg/utils"
	"golang.org/x/sys/unix"
)

// An ADD in progress, as weftd sees it. Between weft-ipam's allocation and
// the record written above, an attachment's address is held by a container
// ID that no record names yet, which looks exactly like a leak. So the
// plugin holds an exclusive flock on dir/.adds/<container ID> for the
// whole ADD (LockAdd), from before the allocation until the record is
// written (or the allocation undone); weftd's release takes the same lock
// without waiting (TryLockAdd) and refuses while an ADD holds it, and its
// listing reports such allocations as being added (Adding). A killed
// plugin drops its flock with its process, so nothing stays locked. The
// holder removes the file before unlocking; a taker that finds its file
// unlinked or replaced once it got the lock tries again, so two holders
// never lock different files of one name. (List skips the dot directory.)
const addsDir = ".adds"

// AddLock is a held ADD lock.
type AddLock struct {
	f    *os.File
	path string
}

// errBusy: another holder has the lock.
var errBusy = errors.New("held")

func addLockPath(dir, containerID string) (string, error) {
	if err := utils.ValidateContainerID(containerID); err != nil {
		return "", fmt.Errorf("endpoint: ADD lock: %s", err.Msg)
	}
	return filepath.Join(dir, addsDir, containerID), nil
}

// LockAdd takes the ADD lock of containerID in dir, waiting (polling, ctx
// bounds the wait) while weftd or a duplicate ADD holds it.
func LockAdd(ctx context.Context, dir, containerID string) (*AddLock, error) {
	for {
		l, err := TryLockAdd(dir, containerID)
		if !errors.Is(err, errBusy) {
			return l, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("endpoint: ADD lock of %s: %w", containerID, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TryLockAdd takes the ADD lock of containerID in dir without waiting.
// IsBusy(err) says that an ADD (or another release) holds it.
func TryLockAdd(dir, containerID string) (*AddLock, error) {
	path, err := addLockPath(dir, containerID)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("endpoint: ADD lock: %w", err)
	}
	for {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, fmt.Errorf("endpoint: ADD lock: %w", err)
		}
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("endpoint: ADD lock of %s: %w", containerID, errBusy)
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("endpoint: ADD lock %s: %w", path, err)
		}
		if samePath(f, path) {
			return &AddLock{f: f, path: path}, nil
		}
		f.Close() // the holder before us removed it: take the new one
	}
}

// IsBusy reports whether err is TryLockAdd's "another holder has it".
func IsBusy(err error) bool { return errors.Is(err, errBusy) }

// samePath reports whether f is still the file at path.
func samePath(f *os.File, path string) bool {
	fi, err := f.Stat()
	if err != nil {
		return false
	}
	pi, err := os.Stat(path)
	return err == nil && os.SameFile(fi, pi)
}

// Unlock removes the lock file and releases the lock.
func (l *AddLock) Unlock() {
	if l == nil {
		return
	}
	_ = os.Remove(l.path)
	_ = l.f.Close()
}

// Adding reports whether an ADD of containerID holds its lock in dir now.
// It creates nothing.
func Adding(dir, containerID string) bool {
	path, err := addLockPath(dir, containerID)
	if err != nil {
		return false
	}
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	err = unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB)
	if err == nil {
		_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	}
	return errors.Is(err, unix.EWOULDBLOCK)
}
