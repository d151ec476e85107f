package nodeemu

import (
	"context"
	"errors"
	"fmt"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
)

func everything() labels.Selector { return labels.Everything() }

// syncPod is the level-triggered sync of one pod key: whatever happened,
// it makes this node's reality match the pod object.
func (e *Emulator) syncPod(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return nil
	}
	pod, err := e.lister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		pod = nil
	} else if err != nil {
		return fmt.Errorf("get pod %s: %w", key, err)
	}
	if pod != nil && pod.Spec.NodeName != e.cfg.Node.Name {
		pod = nil
	}
	run := e.run(key)
	if run != nil && (pod == nil || pod.UID != run.uid) {
		// Gone, or replaced by a new pod of the same name.
		if err := e.release(ctx, run, key, pod == nil); err != nil {
			return err
		}
		run = nil
	}
	if pod == nil {
		return nil
	}
	if pod.DeletionTimestamp != nil {
		return e.finalize(ctx, pod, run)
	}
	if pod.Status.Phase == v1.PodSucceeded || pod.Status.Phase == v1.PodFailed {
		return nil
	}
	if run == nil || !run.ready {
		run = e.start(ctx, pod, run)
		e.setRun(key, run)
	}
	if err := e.writeStatus(ctx, pod, run); err != nil {
		return err
	}
	if !run.ready {
		return errors.New(run.setupErr)
	}
	return nil
}

// release stops a run whose pod object is gone or replaced.
func (e *Emulator) release(ctx context.Context, run *podRun, key string, gone bool) error {
	e.stopRun(run, 2*time.Second)
	if !run.hostNetwork {
		ns, name, _ := cache.SplitMetaNamespaceKey(key)
		if err := e.sb.tearDown(ctx, ns, name, run.uid); err != nil {
			return fmt.Errorf("tear down pod %s network: %w", key, err)
		}
	}
	e.setRun(key, nil)
	e.log.InfoContext(ctx, "pod released", "pod", key, "uid", run.uid, "gone", gone)
	return nil
}

// start sets up a pod: sandbox network and servers, or processes for
// hostNetwork pods. Failures are recorded in the returned run (not ready).
func (e *Emulator) start(ctx context.Context, pod *v1.Pod, prev *podRun) *podRun {
	key := pod.Namespace + "/" + pod.Name
	run := &podRun{key: key, uid: pod.UID, hostNetwork: pod.Spec.HostNetwork, started: time.Now().Truncate(time.Second)}
	if pod.Spec.HostNetwork {
		e.startHostPod(ctx, pod, run)
		return run
	}
	path := e.sb.netnsPath(pod.UID)
	adopt := prev == nil && pod.Status.Phase == v1.PodRunning && pod.Status.PodIP != "" && netnsExists(path)
	if adopt {
		for _, ip := range pod.Status.PodIPs {
			run.ips = append(run.ips, ip.IP)
		}
		if pod.Status.StartTime != nil {
			run.started = pod.Status.StartTime.Time
		}
	} else {
		if err := networkReady(e.cfg.CNI.ConfDir); err != nil {
			run.setupErr = "network is not ready: container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: " + err.Error()
			e.event(pod, "NetworkNotReady", run.setupErr)
			return run
		}
		ips, err := e.sb.setUp(ctx, pod)
		if err != nil {
			run.setupErr = fmt.Sprintf("Failed to create pod sandbox: failed to setup network for sandbox %q: %v", SandboxID(pod.UID), err)
			e.event(pod, "FailedCreatePodSandBox", run.setupErr)
			return run
		}
		run.ips = ips
	}
	if e.cfg.Programs.programPod(pod) {
		if err := e.startPrograms(ctx, pod, run, path); err != nil {
			run.setupErr = fmt.Sprintf("Failed to start pod programs: %v", err)
			e.event(pod, "Failed", run.setupErr)
			return run
		}
		run.ready = true
		e.log.InfoContext(ctx, "pod programs started", "pod", key, "ips", run.ips, "adopted", adopt)
		return run
	}
	servers, err := startServers(ctx, e.log, path, pod.Name, pod)
	if err != nil {
		run.setupErr = fmt.Sprintf("Failed to start pod servers: %v", err)
		e.event(pod, "Failed", run.setupErr)
		if terr := e.sb.tearDown(ctx, pod.Namespace, pod.Name, pod.UID); terr != nil {
			e.log.WarnContext(ctx, "tear down after server failure", "pod", key, "err", terr)
		}
		return run
	}
	run.servers, run.ready = servers, true
	if len(servers.Skipped) > 0 && !adopt {
		e.recorder.Eventf(pod, v1.EventTypeNormal, "PortsNotServed",
			"node emulator serves no %v: the kernel has no sockets for that protocol", servers.Skipped)
	}
	e.log.InfoContext(ctx, "pod running", "pod", key, "ips", run.ips, "adopted", adopt, "skippedPorts", servers.Skipped)
	return run
}

// event records a warning event on the pod (the event correlator of
// client-go aggregates repeats, as with kubelet).
func (e *Emulator) event(pod *v1.Pod, reason, msg string) {
	if e.recorder != nil {
		e.recorder.Event(pod, v1.EventTypeWarning, reason, msg)
	}
}

// startHostPod writes the pod's volumes and starts its processes.
func (e *Emulator) startHostPod(ctx context.Context, pod *v1.Pod, run *podRun) {
	key := run.key
	exp, err := e.vols.prepare(ctx, pod)
	if err != nil {
		run.setupErr = fmt.Sprintf("MountVolume.SetUp failed: %v", err)
		e.event(pod, "FailedMount", run.setupErr)
		return
	}
	tctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	run.stopTokens = cancel
	if !exp.IsZero() {
		go e.refreshVolumes(tctx, pod.DeepCopy(), exp)
	}
	run.procs = startPodProcs(ctx, pod, e.cfg.Proc, e.env, e.log, func() { e.queue.Add(key) })
	run.ips = []string{e.cfg.Node.IP}
	run.ready = true
}

// refreshVolumes rewrites token volumes at 80% of the token lifetime.
func (e *Emulator) refreshVolumes(ctx context.Context, pod *v1.Pod, exp time.Time) {
	for {
		d := time.Until(exp) * 8 / 10
		if d < time.Second {
			d = time.Second
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		next, err := e.vols.prepare(ctx, pod)
		if err != nil {
			e.log.WarnContext(ctx, "refresh pod volumes", "pod", pod.Namespace+"/"+pod.Name, "err", err)
			exp = time.Now().Add(10 * time.Second)
			continue
		}
		exp = next
	}
}

// writeStatus posts the pod status if it differs from what the API has.
func (e *Emulator) writeStatus(ctx context.Context, pod *v1.Pod, run *podRun) error {
	rs := RunState{
		HostIP:     e.cfg.Node.IP,
		PodIPs:     run.ips,
		StartTime:  run.started,
		SandboxErr: run.setupErr,
		Emulated:   run.procs == nil,
	}
	if !run.ready {
		rs.PodIPs = nil
	}
	if run.procs != nil {
		rs.Init, rs.Containers, _ = run.procs.State()
	}
	want := ComputeStatus(pod, rs, time.Now())
	if apiequality.Semantic.DeepEqual(pod.Status, want) {
		return nil
	}
	// The apiserver may normalize what we send (drop a field its feature
	// gates disable, ...): if the object is still the one our last write
	// produced and we would send the same again, don't loop.
	if pod.ResourceVersion == run.wroteRV && apiequality.Semantic.DeepEqual(want, run.wrote) {
		return nil
	}
	p := pod.DeepCopy()
	p.Status = want
	updated, err := e.client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		if apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("update status of pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	run.wrote, run.wroteRV = want, updated.ResourceVersion
	return nil
}

// finalize handles a pod being deleted: stop it, CNI DEL, remove netns,
// then delete the object with grace 0 as kubelet does.
func (e *Emulator) finalize(ctx context.Context, pod *v1.Pod, run *podRun) error {
	key := pod.Namespace + "/" + pod.Name
	grace := 30 * time.Second
	if pod.DeletionGracePeriodSeconds != nil {
		grace = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
	}
	if run != nil {
		e.stopRun(run, grace)
	}
	if !pod.Spec.HostNetwork {
		if err := e.sb.tearDown(ctx, pod.Namespace, pod.Name, pod.UID); err != nil {
			e.setRun(key, &podRun{key: key, uid: pod.UID, setupErr: err.Error()})
			e.event(pod, "FailedKillPod", "error killing pod: "+err.Error())
			return fmt.Errorf("tear down pod %s: %w", key, err)
		}
	}
	e.setRun(key, nil)
	zero := int64(0)
	uid := pod.UID
	err := e.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete pod %s: %w", key, err)
	}
	e.log.InfoContext(ctx, "pod deleted", "pod", key)
	return nil
}
