package nodeemu

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
)

func cond(st v1.PodStatus, t v1.PodConditionType) v1.ConditionStatus {
	for _, c := range st.Conditions {
		if c.Type == t {
			return c.Status
		}
	}
	return ""
}

func TestStatusEmulatedRunning(t *testing.T) {
	pod := testPod()
	pod.Spec.InitContainers = []v1.Container{{Name: "init", Image: "busybox"}}
	pod.Status.QOSClass = v1.PodQOSBestEffort
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	in := RunState{HostIP: "172.18.0.2", PodIPs: []string{"10.244.1.5"}, StartTime: start, Emulated: true}
	st := ComputeStatus(pod, in, start.Add(time.Second))

	if st.Phase != v1.PodRunning || st.PodIP != "10.244.1.5" || len(st.PodIPs) != 1 || st.HostIP != "172.18.0.2" ||
		len(st.HostIPs) != 1 || st.QOSClass != v1.PodQOSBestEffort {
		t.Fatalf("status = %+v", st)
	}
	for _, c := range []v1.PodConditionType{v1.PodReady, v1.ContainersReady, v1.PodInitialized, v1.PodScheduled, v1.PodReadyToStartContainers} {
		if cond(st, c) != v1.ConditionTrue {
			t.Fatalf("condition %s = %q, want True", c, cond(st, c))
		}
	}
	if len(st.ContainerStatuses) != 1 {
		t.Fatalf("container statuses = %+v", st.ContainerStatuses)
	}
	cs := st.ContainerStatuses[0]
	if !cs.Ready || cs.State.Running == nil || !cs.State.Running.StartedAt.Time.Equal(start) || cs.ContainerID == "" || *cs.Started != true {
		t.Fatalf("container status = %+v", cs)
	}
	if ic := st.InitContainerStatuses; len(ic) != 1 || ic[0].State.Terminated == nil || ic[0].State.Terminated.ExitCode != 0 {
		t.Fatalf("init container statuses = %+v", ic)
	}

	// A resync from the posted status computes the identical object: no write.
	pod.Status = st
	again := ComputeStatus(pod, in, start.Add(time.Hour))
	if !apiequality.Semantic.DeepEqual(st, again) {
		t.Fatalf("resync changed the status:\n%+v\n%+v", st, again)
	}
}

func TestStatusSandboxFailure(t *testing.T) {
	pod := testPod()
	now := time.Now()
	in := RunState{HostIP: "172.18.0.2", SandboxErr: "plugin type=\"weft\" failed (add): boom", StartTime: now}
	st := ComputeStatus(pod, in, now)
	if st.Phase != v1.PodPending || st.PodIP != "" || len(st.PodIPs) != 0 {
		t.Fatalf("status = %+v", st)
	}
	if w := st.ContainerStatuses[0].State.Waiting; w == nil || w.Reason != "ContainerCreating" || st.ContainerStatuses[0].Ready {
		t.Fatalf("container status = %+v", st.ContainerStatuses[0])
	}
	if cond(st, v1.PodReady) != v1.ConditionFalse || cond(st, v1.PodReadyToStartContainers) != v1.ConditionFalse ||
		cond(st, v1.PodScheduled) != v1.ConditionTrue {
		t.Fatalf("conditions = %+v", st.Conditions)
	}

	// Recovery flips Ready and moves its transition time.
	pod.Status = st
	later := now.Add(time.Minute)
	ok := ComputeStatus(pod, RunState{HostIP: "172.18.0.2", PodIPs: []string{"10.244.1.9"}, StartTime: later, Emulated: true}, later)
	for _, c := range ok.Conditions {
		if c.Type == v1.PodReady && (c.Status != v1.ConditionTrue || !c.LastTransitionTime.Time.Equal(later.Truncate(time.Second))) {
			t.Fatalf("Ready after recovery = %+v", c)
		}
	}
}

func TestStatusProcessPod(t *testing.T) {
	pod := testPod()
	pod.Spec.HostNetwork = true
	pod.Spec.InitContainers = []v1.Container{{Name: "install-cni"}}
	now := time.Now()
	in := RunState{HostIP: "172.18.0.2", PodIPs: []string{"172.18.0.2"}, StartTime: now,
		Init:       []ContainerState{{Name: "install-cni", Running: true, StartedAt: now}},
		Containers: []ContainerState{{Name: "app", Waiting: "PodInitializing"}}}
	st := ComputeStatus(pod, in, now)
	if st.Phase != v1.PodPending || cond(st, v1.PodInitialized) != v1.ConditionFalse || cond(st, v1.PodReady) != v1.ConditionFalse {
		t.Fatalf("init running: phase %s conditions %+v", st.Phase, st.Conditions)
	}

	in.Init = []ContainerState{{Name: "install-cni", Terminated: &Termination{ExitCode: 0, Reason: "Completed"}}}
	in.Containers = []ContainerState{{Name: "app", Waiting: "CrashLoopBackOff", RestartCount: 3,
		LastTerminated: &Termination{ExitCode: 1, Reason: "Error"}}}
	st = ComputeStatus(pod, in, now)
	cs := st.ContainerStatuses[0]
	if st.Phase != v1.PodRunning || cs.Ready || cs.RestartCount != 3 || cs.State.Waiting.Reason != "CrashLoopBackOff" ||
		cs.LastTerminationState.Terminated.ExitCode != 1 || cond(st, v1.PodInitialized) != v1.ConditionTrue {
		t.Fatalf("crash loop: phase %s status %+v", st.Phase, cs)
	}

	in.Containers = []ContainerState{{Name: "app", Running: true, StartedAt: now, RestartCount: 3}}
	st = ComputeStatus(pod, in, now)
	if st.Phase != v1.PodRunning || !st.ContainerStatuses[0].Ready || cond(st, v1.PodReady) != v1.ConditionTrue || st.PodIP != "172.18.0.2" {
		t.Fatalf("running: %+v", st)
	}
}

func TestStatusFinishedPod(t *testing.T) {
	pod := testPod()
	pod.Spec.HostNetwork = true
	now := time.Now()
	done := func(code int32) RunState {
		return RunState{HostIP: "172.18.0.2", PodIPs: []string{"172.18.0.2"}, StartTime: now,
			Containers: []ContainerState{{Name: "app", Terminated: &Termination{ExitCode: code}}}}
	}
	for _, c := range []struct {
		policy v1.RestartPolicy
		code   int32
		want   v1.PodPhase
	}{
		{v1.RestartPolicyNever, 0, v1.PodSucceeded},
		{v1.RestartPolicyNever, 2, v1.PodFailed},
		{v1.RestartPolicyOnFailure, 0, v1.PodSucceeded},
		{v1.RestartPolicyOnFailure, 2, v1.PodRunning},
		{v1.RestartPolicyAlways, 0, v1.PodRunning},
	} {
		pod.Spec.RestartPolicy = c.policy
		if got := ComputeStatus(pod, done(c.code), now).Phase; got != c.want {
			t.Errorf("restartPolicy %s exit %d: phase %s, want %s", c.policy, c.code, got, c.want)
		}
	}
}
