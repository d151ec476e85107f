package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// procSpec is one long-running cluster process.
type procSpec struct {
	Name  string   // pid/log file name, e.g. "kube-apiserver", "nodeemu-wl-node1"
	Argv  []string // binary (absolute) and arguments
	Netns string   // network namespace name under /run/netns
	Mntns string   // optional persisted mount namespace file
	Env   []string // extra environment
}

// start launches p detached (own session), in its namespaces through
// nsenter, which execs the binary so the pid file names the process itself.
func (c *Cluster) start(p procSpec) error {
	if err := os.MkdirAll(c.logDir(), 0o755); err != nil {
		return fmt.Errorf("create log dir: %w", err)
	}
	if err := os.MkdirAll(c.pidDir(), 0o755); err != nil {
		return fmt.Errorf("create pid dir: %w", err)
	}
	if pid, ok := c.running(p.Name); ok {
		c.log.Debug("already running", "proc", p.Name, "pid", pid)
		return nil
	}
	logf, err := os.OpenFile(filepath.Join(c.logDir(), p.Name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log for %s: %w", p.Name, err)
	}
	defer logf.Close()
	args := []string{"--net=" + filepath.Join(NetnsDir, p.Netns)}
	if p.Mntns != "" {
		args = append(args, "--mount="+p.Mntns)
	}
	args = append(args, "--")
	args = append(args, p.Argv...)
	cmd := exec.Command("nsenter", args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// The marker lets tests find the cluster's processes (and only them).
	cmd.Env = append(append(os.Environ(), "WEFT_LOCALCLUSTER="+c.opt.StateDir), p.Env...)
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.Name, err)
	}
	pid := cmd.Process.Pid
	if err := os.WriteFile(c.pidFile(p.Name), []byte(strconv.Itoa(pid)+"\n"+p.Argv[0]+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return fmt.Errorf("write pid file of %s: %w", p.Name, err)
	}
	// Reap it if it dies while we are still around (Up waits for health).
	go func() { _ = cmd.Wait() }()
	c.log.Debug("started", "proc", p.Name, "pid", pid)
	return nil
}

func (c *Cluster) pidFile(name string) string { return filepath.Join(c.pidDir(), name+".pid") }

// running reports whether the process of a pid file is alive and still
// runs the binary it was started with.
func (c *Cluster) running(name string) (int, bool) {
	data, err := os.ReadFile(c.pidFile(name))
	if err != nil {
		return 0, false
	}
	lines := strings.SplitN(strings.TrimSpace(string(data)), "\n", 2)
	pid, err := strconv.Atoi(lines[0])
	if err != nil || pid <= 1 {
		return 0, false
	}
	if len(lines) < 2 {
		return pid, processAlive(pid)
	}
	return pid, processRuns(pid, lines[1])
}

func processAlive(pid int) bool {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// state field after "(comm) "; Z = zombie.
	i := bytes.LastIndexByte(stat, ')')
	return i > 0 && i+2 < len(stat) && stat[i+2] != 'Z'
}

// processRuns reports whether pid is alive and its argv[0] is bin (pid reuse check).
func processRuns(pid int, bin string) bool {
	if !processAlive(pid) {
		return false
	}
	var cmdline []byte
	// While nsenter execs the binary, cmdline reads empty for a moment;
	// an empty one that stays empty is a kernel thread, not ours.
	for try := 0; try < 10; try++ {
		var err error
		cmdline, err = os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err != nil {
			return false
		}
		if len(cmdline) > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	argv0, _, _ := bytes.Cut(cmdline, []byte{0})
	// Right after start the process may still be nsenter, about to exec.
	return string(argv0) == bin || filepath.Base(string(argv0)) == "nsenter"
}

// stopPids sends SIGTERM to every pid, waits up to grace for them to exit,
// then SIGKILLs the rest.
func stopPids(ctx context.Context, pids []int, grace time.Duration) {
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGTERM)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		alive := 0
		for _, pid := range pids {
			if processAlive(pid) {
				alive++
			}
		}
		if alive == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, pid := range pids {
		if processAlive(pid) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	for i := 0; i < 50; i++ {
		alive := false
		for _, pid := range pids {
			alive = alive || processAlive(pid)
		}
		if !alive {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// nsInode returns the inode of a namespace file (or /proc/<pid>/ns/<x>).
func nsInode(path string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return 0, err
	}
	return st.Ino, nil
}

// pidsInNamespaces lists processes (other than ourselves) whose network
// namespace is one of netInodes or whose mount namespace is one of mntInodes.
func pidsInNamespaces(netInodes, mntInodes map[uint64]bool) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	var out []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && netInodes[ino] {
			out = append(out, pid)
			continue
		}
		if ino, err := nsInode(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && mntInodes[ino] {
			out = append(out, pid)
		}
	}
	return out
}

// run runs a short command and returns its combined output in the error.
func run(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// output runs a short command and returns its stdout.
func output(ctx context.Context, name string, args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return string(out), nil
}

var errNotRunning = errors.New("not running")
