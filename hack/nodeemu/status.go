package nodeemu

import (
	"crypto/sha256"
	"encoding/hex"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Termination records how a container process ended.
type Termination struct {
	ExitCode   int32
	Reason     string // Completed, Error, ...
	StartedAt  time.Time
	FinishedAt time.Time
}

// ContainerState is the runtime's view of one container.
type ContainerState struct {
	Name           string
	ContainerID    string
	RestartCount   int32
	Running        bool
	StartedAt      time.Time    // when Running
	Waiting        string       // reason when neither running nor terminated
	WaitingMessage string       // e.g. the last start error
	Terminated     *Termination // current state when it ended and is not restarted
	LastTerminated *Termination
	NotReady       bool  // running, but its readiness probe has not passed
	starts         int32 // process starts so far (RestartCount = starts-1)
}

// RunState is everything ComputeStatus needs to know about a pod on this
// node besides the pod object itself.
type RunState struct {
	HostIP     string
	PodIPs     []string
	StartTime  time.Time
	SandboxErr string // non-empty: sandbox (CNI) not set up, pod stays ContainerCreating
	// Init and Containers describe real processes (hostNetwork pods). When
	// both are nil every container counts as running since StartTime and
	// every init container as completed: the emulated pods.
	Init       []ContainerState
	Containers []ContainerState
	Emulated   bool
}

// emulatedContainerID is a stable fake container ID.
func emulatedContainerID(sandboxID, name string) string {
	sum := sha256.Sum256([]byte(sandboxID + "/" + name))
	return "nodeemu://" + hex.EncodeToString(sum[:])
}

// ComputeStatus returns the pod status kubelet would report for in. Times
// that did not change are kept from the current status so that a resync
// produces an identical object and no write.
func ComputeStatus(pod *v1.Pod, in RunState, now time.Time) v1.PodStatus {
	st := *pod.Status.DeepCopy()
	if in.HostIP != "" {
		st.HostIP = in.HostIP
		st.HostIPs = []v1.HostIP{{IP: in.HostIP}}
	}
	if len(in.PodIPs) > 0 {
		st.PodIP = in.PodIPs[0]
		st.PodIPs = nil
		for _, ip := range in.PodIPs {
			st.PodIPs = append(st.PodIPs, v1.PodIP{IP: ip})
		}
	}
	if st.StartTime == nil && !in.StartTime.IsZero() {
		t := metav1.NewTime(in.StartTime)
		st.StartTime = &t
	}
	id := SandboxID(pod.UID)

	initDone := true
	st.InitContainerStatuses = nil
	for i, c := range pod.Spec.InitContainers {
		var cs ContainerState
		switch {
		case in.SandboxErr != "":
			cs = ContainerState{Name: c.Name, Waiting: "PodInitializing"}
		case in.Emulated:
			cs = ContainerState{Name: c.Name, ContainerID: emulatedContainerID(id, c.Name),
				Terminated: &Termination{Reason: "Completed", StartedAt: in.StartTime, FinishedAt: in.StartTime}}
		case i < len(in.Init):
			cs = in.Init[i]
		default:
			cs = ContainerState{Name: c.Name, Waiting: "PodInitializing"}
		}
		done := cs.Terminated != nil && cs.Terminated.ExitCode == 0
		initDone = initDone && done
		st.InitContainerStatuses = append(st.InitContainerStatuses, containerStatus(c, cs, done))
	}

	allReady, anyStarted := true, false
	st.ContainerStatuses = nil
	for i, c := range pod.Spec.Containers {
		var cs ContainerState
		switch {
		case in.SandboxErr != "":
			cs = ContainerState{Name: c.Name, Waiting: "ContainerCreating"}
		case in.Emulated:
			cs = ContainerState{Name: c.Name, ContainerID: emulatedContainerID(id, c.Name),
				Running: true, StartedAt: in.StartTime}
		case i < len(in.Containers):
			cs = in.Containers[i]
		default:
			cs = ContainerState{Name: c.Name, Waiting: "PodInitializing"}
		}
		ready := cs.Running && !cs.NotReady
		allReady = allReady && ready
		anyStarted = anyStarted || cs.Running || cs.RestartCount > 0 || cs.Terminated != nil
		st.ContainerStatuses = append(st.ContainerStatuses, containerStatus(c, cs, ready))
	}

	switch {
	case in.SandboxErr != "" || !initDone || !anyStarted:
		st.Phase = v1.PodPending
	default:
		st.Phase = v1.PodRunning
	}
	if p := finishedPhase(pod, in); p != "" {
		st.Phase = p
	}
	sandboxReady := in.SandboxErr == ""
	ready := allReady && initDone && sandboxReady
	setCondition(&st, v1.PodReadyToStartContainers, sandboxReady, "", now)
	setCondition(&st, v1.PodInitialized, initDone, reasonIf(!initDone, "ContainersNotInitialized"), now)
	setCondition(&st, v1.ContainersReady, ready, reasonIf(!ready, "ContainersNotReady"), now)
	setCondition(&st, v1.PodReady, ready, reasonIf(!ready, "ContainersNotReady"), now)
	setCondition(&st, v1.PodScheduled, true, "", now)
	return st
}

// finishedPhase is Succeeded or Failed when the processes of a pod that is
// not restarted (restartPolicy Never/OnFailure) have all ended for good.
func finishedPhase(pod *v1.Pod, in RunState) v1.PodPhase {
	if in.Emulated || pod.Spec.RestartPolicy == v1.RestartPolicyAlways || pod.Spec.RestartPolicy == "" ||
		len(in.Containers) == 0 {
		return ""
	}
	failed := false
	for _, c := range in.Containers {
		if c.Terminated == nil || c.Running {
			return ""
		}
		if c.Terminated.ExitCode != 0 {
			if pod.Spec.RestartPolicy == v1.RestartPolicyOnFailure {
				return "" // will be restarted
			}
			failed = true
		}
	}
	if failed {
		return v1.PodFailed
	}
	return v1.PodSucceeded
}

func reasonIf(b bool, reason string) string {
	if b {
		return reason
	}
	return ""
}

func mtime(t time.Time) metav1.Time { return metav1.NewTime(t.Truncate(time.Second)) }

func containerStatus(c v1.Container, cs ContainerState, ready bool) v1.ContainerStatus {
	started := cs.Running
	out := v1.ContainerStatus{
		Name:         c.Name,
		Image:        c.Image,
		ImageID:      c.Image,
		ContainerID:  cs.ContainerID,
		RestartCount: cs.RestartCount,
		Ready:        ready,
		Started:      &started,
	}
	switch {
	case cs.Running:
		out.State.Running = &v1.ContainerStateRunning{StartedAt: mtime(cs.StartedAt)}
	case cs.Terminated != nil:
		out.State.Terminated = termState(cs.Terminated, cs.ContainerID)
	default:
		out.State.Waiting = &v1.ContainerStateWaiting{Reason: cs.Waiting, Message: cs.WaitingMessage}
	}
	if cs.LastTerminated != nil {
		out.LastTerminationState.Terminated = termState(cs.LastTerminated, cs.ContainerID)
	}
	return out
}

func termState(t *Termination, id string) *v1.ContainerStateTerminated {
	return &v1.ContainerStateTerminated{
		ExitCode:    t.ExitCode,
		Reason:      t.Reason,
		StartedAt:   mtime(t.StartedAt),
		FinishedAt:  mtime(t.FinishedAt),
		ContainerID: id,
	}
}

// setCondition sets a condition, keeping its transition time when the
// status did not change.
func setCondition(st *v1.PodStatus, typ v1.PodConditionType, ok bool, reason string, now time.Time) {
	status := v1.ConditionFalse
	if ok {
		status = v1.ConditionTrue
	}
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type != typ {
			continue
		}
		if c.Status != status {
			c.LastTransitionTime = mtime(now)
		}
		c.Status, c.Reason, c.Message = status, reason, ""
		return
	}
	st.Conditions = append(st.Conditions, v1.PodCondition{
		Type: typ, Status: status, Reason: reason, LastTransitionTime: mtime(now),
	})
}
