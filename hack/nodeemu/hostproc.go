package nodeemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
)

// ProcOptions configure how hostNetwork pods run as node processes.
type ProcOptions struct {
	ImageBinDir  string            // where a container's command (or image name) is looked up (colon-separated list)
	ImageRootfs  map[string]string // image repository -> its exported root file system (see imagefs.go)
	LogDir       string            // <ns>_<pod>_<container>.log files
	BackoffBase  time.Duration     // first restart delay (kubelet: 10s)
	BackoffMax   time.Duration     // cap (kubelet: 5m)
	StopGraceMax time.Duration     // cap on the SIGTERM→SIGKILL wait
}

// podProcs runs one hostNetwork pod: init containers to completion in
// order, then the containers, restarting them with backoff.
type podProcs struct {
	pod    *v1.Pod
	opts   ProcOptions
	env    *envResolver
	log    *slog.Logger
	notify func() // a container state changed
	cancel context.CancelFunc
	done   chan struct{}
	grace  chan time.Duration

	// sandbox, when set, runs the processes inside a pod's own network
	// namespace and a mount namespace of their own (pod programs);
	// probeHost is where probes connect (the pod IP; else the node IP).
	sandbox   *progSandbox
	probeHost string

	mu    sync.Mutex
	init  []ContainerState
	ctrs  []ContainerState
	start time.Time
}

func startPodProcs(ctx context.Context, pod *v1.Pod, opts ProcOptions, env *envResolver, log *slog.Logger, notify func()) *podProcs {
	return startProcs(ctx, pod, opts, env, log, notify, nil, env.nodeIP)
}

func startProcs(ctx context.Context, pod *v1.Pod, opts ProcOptions, env *envResolver, log *slog.Logger, notify func(),
	sandbox *progSandbox, probeHost string) *podProcs {
	ctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &podProcs{
		pod: pod.DeepCopy(), opts: opts, env: env, notify: notify, cancel: cancel,
		log:       log.With("pod", pod.Namespace+"/"+pod.Name),
		done:      make(chan struct{}),
		grace:     make(chan time.Duration, 1),
		start:     time.Now(),
		sandbox:   sandbox,
		probeHost: probeHost,
	}
	for _, c := range pod.Spec.InitContainers {
		p.init = append(p.init, ContainerState{Name: c.Name, Waiting: "PodInitializing"})
	}
	for _, c := range pod.Spec.Containers {
		p.ctrs = append(p.ctrs, ContainerState{Name: c.Name, Waiting: "PodInitializing"})
	}
	go p.run(ctx)
	return p
}

// State returns a copy of the container states for ComputeStatus.
func (p *podProcs) State() (init, ctrs []ContainerState, start time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]ContainerState(nil), p.init...), append([]ContainerState(nil), p.ctrs...), p.start
}

// Stop sends SIGTERM to every process, SIGKILL after grace, and waits.
func (p *podProcs) Stop(grace time.Duration) {
	if p.opts.StopGraceMax > 0 && grace > p.opts.StopGraceMax {
		grace = p.opts.StopGraceMax
	}
	select {
	case p.grace <- grace:
	default:
	}
	p.cancel()
	<-p.done
}

func (p *podProcs) stopGrace() time.Duration {
	select {
	case g := <-p.grace:
		p.grace <- g
		return g
	default:
		return 0
	}
}

func (p *podProcs) update(init bool, i int, f func(*ContainerState)) {
	p.mu.Lock()
	if init {
		f(&p.init[i])
	} else {
		f(&p.ctrs[i])
	}
	p.mu.Unlock()
	p.notify()
}

func (p *podProcs) run(ctx context.Context) {
	defer close(p.done)
	for i := range p.pod.Spec.InitContainers {
		c := &p.pod.Spec.InitContainers[i]
		for attempt := 0; ; attempt++ {
			code := p.runOnce(ctx, true, i, c)
			if ctx.Err() != nil {
				return
			}
			if code == 0 {
				break
			}
			if p.pod.Spec.RestartPolicy == v1.RestartPolicyNever {
				return
			}
			if !p.sleep(ctx, attempt, true, i) {
				return
			}
		}
	}
	var wg sync.WaitGroup
	for i := range p.pod.Spec.Containers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.supervise(ctx, i)
		}()
	}
	wg.Wait()
}

// supervise keeps one container running (restartPolicy Always/OnFailure).
func (p *podProcs) supervise(ctx context.Context, i int) {
	c := &p.pod.Spec.Containers[i]
	attempt := 0
	for {
		began := time.Now()
		code := p.runOnce(ctx, false, i, c)
		if ctx.Err() != nil {
			return
		}
		switch p.pod.Spec.RestartPolicy {
		case v1.RestartPolicyNever:
			return
		case v1.RestartPolicyOnFailure:
			if code == 0 {
				return
			}
		}
		if time.Since(began) > 10*time.Minute {
			attempt = 0
		}
		if !p.sleep(ctx, attempt, false, i) {
			return
		}
		attempt++
	}
}

// sleep waits the restart backoff, reporting CrashLoopBackOff meanwhile.
func (p *podProcs) sleep(ctx context.Context, attempt int, init bool, i int) bool {
	d := p.opts.BackoffBase << min(attempt, 16)
	if d > p.opts.BackoffMax || d <= 0 {
		d = p.opts.BackoffMax
	}
	p.update(init, i, func(s *ContainerState) {
		s.Waiting, s.WaitingMessage = "CrashLoopBackOff", fmt.Sprintf("back-off %s restarting failed container", d)
		if s.Terminated != nil {
			s.LastTerminated, s.Terminated = s.Terminated, nil
		}
	})
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// runOnce starts the container's process and waits for it; it returns the
// exit code (-1 when it could not start).
func (p *podProcs) runOnce(ctx context.Context, init bool, i int, c *v1.Container) int {
	cmd, logf, err := p.command(ctx, c)
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		if logf != nil {
			_ = logf.Close()
		}
		p.log.WarnContext(ctx, "container failed to start", "container", c.Name, "err", err)
		now := time.Now()
		p.update(init, i, func(s *ContainerState) {
			s.starts++
			s.RestartCount = s.starts - 1
			s.Running = false
			s.Terminated = &Termination{ExitCode: 128, Reason: "StartError", StartedAt: now, FinishedAt: now}
			s.WaitingMessage = err.Error()
		})
		return -1
	}
	started := time.Now()
	p.log.InfoContext(ctx, "container started", "container", c.Name, "pid", cmd.Process.Pid, "argv", cmd.Args)
	p.update(init, i, func(s *ContainerState) {
		s.starts++
		s.RestartCount = s.starts - 1
		if s.Terminated != nil {
			s.LastTerminated = s.Terminated
		}
		s.ContainerID = fmt.Sprintf("nodeemu://pid-%d", cmd.Process.Pid)
		s.Running, s.StartedAt, s.Terminated, s.Waiting, s.WaitingMessage = true, started, nil, "", ""
		s.NotReady = !init && c.ReadinessProbe != nil
	})
	pctx, stopProbe := context.WithCancel(ctx)
	defer stopProbe()
	unhealthy := make(chan struct{}, 1)
	if !init {
		if pr := newProber(c, c.ReadinessProbe, p.probeHost); pr != nil {
			go pr.run(pctx, false, func(ready bool) {
				if pctx.Err() == nil {
					p.update(init, i, func(s *ContainerState) { s.NotReady = !ready })
				}
			})
		}
		if pr := newProber(c, c.LivenessProbe, p.probeHost); pr != nil {
			go pr.run(pctx, true, func(alive bool) {
				if !alive {
					select {
					case unhealthy <- struct{}{}:
					default:
					}
				}
			})
		}
	}

	waitErr := make(chan error, 1)
	go func() { waitErr <- cmd.Wait() }()
	var werr error
	select {
	case werr = <-waitErr:
	case <-ctx.Done():
		werr = p.kill(cmd, waitErr, p.stopGrace())
	case <-unhealthy:
		p.log.InfoContext(ctx, "liveness probe failed, restarting container", "container", c.Name)
		stopProbe()
		werr = p.kill(cmd, waitErr, p.podGrace())
	}
	_ = logf.Close()
	code, reason := exitCode(cmd, werr)
	p.log.InfoContext(ctx, "container exited", "container", c.Name, "code", code, "reason", reason)
	p.update(init, i, func(s *ContainerState) {
		s.Running = false
		s.Terminated = &Termination{ExitCode: int32(code), Reason: reason, StartedAt: started, FinishedAt: time.Now()}
	})
	return code
}

// podGrace is the pod's termination grace period, capped.
func (p *podProcs) podGrace() time.Duration {
	g := 30 * time.Second
	if tg := p.pod.Spec.TerminationGracePeriodSeconds; tg != nil {
		g = time.Duration(*tg) * time.Second
	}
	if p.opts.StopGraceMax > 0 && g > p.opts.StopGraceMax {
		g = p.opts.StopGraceMax
	}
	return g
}

// kill sends SIGTERM to the process group, SIGKILL after the grace period.
func (p *podProcs) kill(cmd *exec.Cmd, waitErr <-chan error, grace time.Duration) error {
	pgid := -cmd.Process.Pid
	_ = syscall.Kill(pgid, syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case err := <-waitErr:
		_ = syscall.Kill(pgid, syscall.SIGKILL) // leftovers of the group
		return err
	case <-t.C:
		_ = syscall.Kill(pgid, syscall.SIGKILL)
		return <-waitErr
	}
}

func exitCode(cmd *exec.Cmd, err error) (int, string) {
	if err == nil {
		return 0, "Completed"
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return 128 + int(ws.Signal()), "Error"
		}
		return ee.ExitCode(), "Error"
	}
	return 128, "Error"
}

// command builds the process for a container: argv resolved through the
// image bin dir, environment resolved like kubelet, output to the log file.
func (p *podProcs) command(ctx context.Context, c *v1.Container) (*exec.Cmd, *os.File, error) {
	env, err := p.env.Env(ctx, p.pod, c)
	if err != nil {
		return nil, nil, err
	}
	if p.sandbox != nil {
		env = overrideEnv(env, p.sandbox.env)
	}
	vals := envMap(env)
	argv := make([]string, 0, len(c.Command)+len(c.Args)+1)
	for _, a := range c.Command {
		argv = append(argv, Expand(a, vals))
	}
	if len(argv) == 0 {
		argv = append(argv, imageEntrypoint(c.Image))
	}
	for _, a := range c.Args {
		argv = append(argv, Expand(a, vals))
	}
	cmd, err := p.process(c, argv)
	if err != nil {
		return nil, nil, fmt.Errorf("container %s: %w", c.Name, err)
	}
	if _, ok := p.opts.ImageRootfs[imageRepository(c.Image)]; ok && p.sandbox == nil {
		env = withPath(env)
	}
	if err := os.MkdirAll(p.opts.LogDir, 0o755); err != nil {
		return nil, nil, fmt.Errorf("create log dir: %w", err)
	}
	logPath := filepath.Join(p.opts.LogDir, fmt.Sprintf("%s_%s_%s.log", p.pod.Namespace, p.pod.Name, c.Name))
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("open log %s: %w", logPath, err)
	}
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	if c.WorkingDir != "" {
		if fi, err := os.Stat(c.WorkingDir); err == nil && fi.IsDir() {
			cmd.Dir = c.WorkingDir
		}
	}
	// Own process group, so SIGTERM/SIGKILL reach the children of shells;
	// die with the emulator rather than outlive the node.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	return cmd, logf, nil
}

// process is the container's process: inside its image's root file system
// when one is given for its image (hostNetwork pods), else the binary
// resolved through the image bin dir, in the pod program's sandbox or in
// the node's namespaces.
func (p *podProcs) process(c *v1.Container, argv []string) (*exec.Cmd, error) {
	if dir, ok := p.opts.ImageRootfs[imageRepository(c.Image)]; ok && p.sandbox == nil {
		return rootfsCommand(dir, c, argv)
	}
	bin, err := ResolveBinary(p.opts.ImageBinDir, argv[0])
	if err != nil {
		return nil, err
	}
	if p.sandbox != nil {
		return p.sandbox.command(bin, argv[1:])
	}
	cmd := exec.Command(bin, argv[1:]...)
	cmd.Args[0] = argv[0]
	return cmd, nil
}

// imageEntrypoint maps an image without a command to a binary name: the
// last path element of the repository ("ghcr.io/weftnet/weft:v1" → "weft").
func imageEntrypoint(image string) string {
	name := image
	if i := strings.LastIndex(name, "@"); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndex(name, "/"); i >= 0 {
		name = name[i+1:]
	}
	if i := strings.Index(name, ":"); i >= 0 {
		name = name[:i]
	}
	return name
}

// ResolveBinary finds the executable for a container's command[0]:
// imageBinDir/<command[0]> (the bin dir stands for the image's root
// filesystem), then imageBinDir/<base name>, for each directory of the
// colon-separated list in turn, then the node's own file system (absolute
// paths) or PATH (for sh, cp, ...).
func ResolveBinary(imageBinDir, name string) (string, error) {
	var cands []string
	for _, dir := range filepath.SplitList(imageBinDir) {
		if dir != "" {
			cands = append(cands, filepath.Join(dir, filepath.Clean("/"+name)), filepath.Join(dir, filepath.Base(name)))
		}
	}
	for _, c := range cands {
		if fi, err := os.Stat(c); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	if filepath.IsAbs(name) {
		if _, err := os.Stat(name); err == nil {
			return name, nil
		}
		return "", fmt.Errorf("executable %s found neither in image bin dir %q nor on the node", name, imageBinDir)
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("executable %s found neither in image bin dir %q nor in PATH: %w", name, imageBinDir, err)
	}
	return p, nil
}
