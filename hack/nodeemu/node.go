package nodeemu

import (
	"context"
	"crypto/sha256"
	"fmt"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
	coordv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// NodeOptions describe the Node this emulator registers.
type NodeOptions struct {
	Name           string
	IP             string
	KubeletVersion string
	CPU            resource.Quantity
	Memory         resource.Quantity
	Pods           int64
	LeaseInterval  time.Duration // kubelet: 10s
	StatusInterval time.Duration // how often node status is re-checked
}

const (
	leaseNamespace  = "kube-node-lease"
	leaseDuration   = 40 // seconds, kubelet's default
	statusReportAge = time.Minute
)

func (e *Emulator) capacity() v1.ResourceList {
	o := e.cfg.Node
	return v1.ResourceList{
		v1.ResourceCPU:              o.CPU,
		v1.ResourceMemory:           o.Memory,
		v1.ResourcePods:             *resource.NewQuantity(o.Pods, resource.DecimalSI),
		v1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
}

func kernelVersion() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func nodeID(name, kind string) string {
	sum := sha256.Sum256([]byte(kind + "/" + name))
	return fmt.Sprintf("%x", sum[:16])
}

// nodeStatus is the status kubelet would post; Ready follows the runtime's
// network readiness (a loadable CNI config), as with containerd.
func (e *Emulator) nodeStatus(old v1.NodeStatus, now time.Time) v1.NodeStatus {
	o := e.cfg.Node
	st := *old.DeepCopy()
	st.Capacity = e.capacity()
	st.Allocatable = e.capacity()
	st.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: o.IP},
		{Type: v1.NodeHostName, Address: o.Name},
	}
	st.DaemonEndpoints = v1.NodeDaemonEndpoints{KubeletEndpoint: v1.DaemonEndpoint{Port: 10250}}
	st.NodeInfo = v1.NodeSystemInfo{
		MachineID:               nodeID(o.Name, "machine"),
		SystemUUID:              nodeID(o.Name, "system"),
		BootID:                  e.bootID,
		KernelVersion:           kernelVersion(),
		OSImage:                 "Weft node emulator",
		ContainerRuntimeVersion: "nodeemu://1.0.0",
		KubeletVersion:          o.KubeletVersion,
		OperatingSystem:         runtime.GOOS,
		Architecture:            runtime.GOARCH,
	}
	ready, reason, msg := v1.ConditionTrue, "KubeletReady", "kubelet is posting ready status"
	if err := networkReady(e.cfg.CNI.ConfDir); err != nil {
		ready, reason = v1.ConditionFalse, "KubeletNotReady"
		msg = "container runtime network not ready: NetworkReady=false reason:NetworkPluginNotReady message:Network plugin returns error: " + err.Error()
	}
	conds := []struct {
		t      v1.NodeConditionType
		s      v1.ConditionStatus
		reason string
		msg    string
	}{
		{v1.NodeMemoryPressure, v1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"},
		{v1.NodeDiskPressure, v1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"},
		{v1.NodePIDPressure, v1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"},
		{v1.NodeReady, ready, reason, msg},
	}
	for _, c := range conds {
		setNodeCondition(&st, c.t, c.s, c.reason, c.msg, now)
	}
	return st
}

func setNodeCondition(st *v1.NodeStatus, t v1.NodeConditionType, s v1.ConditionStatus, reason, msg string, now time.Time) {
	nowT := metav1.NewTime(now.Truncate(time.Second))
	for i := range st.Conditions {
		c := &st.Conditions[i]
		if c.Type != t {
			continue
		}
		if c.Status != s {
			c.LastTransitionTime = nowT
		}
		c.Status, c.Reason, c.Message, c.LastHeartbeatTime = s, reason, msg, nowT
		return
	}
	st.Conditions = append(st.Conditions, v1.NodeCondition{
		Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: nowT, LastTransitionTime: nowT,
	})
}

func nodeReady(st v1.NodeStatus) v1.ConditionStatus {
	for _, c := range st.Conditions {
		if c.Type == v1.NodeReady {
			return c.Status
		}
	}
	return v1.ConditionUnknown
}

// register creates the Node (or adopts an existing one) and posts status.
func (e *Emulator) register(ctx context.Context) (*v1.Node, error) {
	o := e.cfg.Node
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: o.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname":  o.Name,
				"kubernetes.io/os":        runtime.GOOS,
				"kubernetes.io/arch":      runtime.GOARCH,
				"beta.kubernetes.io/os":   runtime.GOOS,
				"beta.kubernetes.io/arch": runtime.GOARCH,
			},
		},
	}
	node.Status = e.nodeStatus(v1.NodeStatus{}, time.Now())
	created, err := e.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	switch {
	case err == nil:
		e.log.InfoContext(ctx, "node registered")
		node = created
	case apierrors.IsAlreadyExists(err):
		node, err = e.client.CoreV1().Nodes().Get(ctx, o.Name, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("get existing node %s: %w", o.Name, err)
		}
		e.log.InfoContext(ctx, "node already registered, adopting it")
	default:
		return nil, fmt.Errorf("register node %s: %w", o.Name, err)
	}
	return e.postNodeStatus(ctx, node)
}

func (e *Emulator) postNodeStatus(ctx context.Context, node *v1.Node) (*v1.Node, error) {
	n := node.DeepCopy()
	n.Status = e.nodeStatus(node.Status, time.Now())
	updated, err := e.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("update node %s status: %w", node.Name, err)
	}
	return updated, nil
}

// nodeLoop keeps the Lease renewed and the node status current until ctx
// ends. Status is posted when Ready changes or once a minute.
func (e *Emulator) nodeLoop(ctx context.Context, node *v1.Node) {
	leaseT := time.NewTicker(e.cfg.Node.LeaseInterval)
	defer leaseT.Stop()
	statusT := time.NewTicker(e.cfg.Node.StatusInterval)
	defer statusT.Stop()
	lastPost := time.Now()
	e.renewLease(ctx, node)
	for {
		select {
		case <-ctx.Done():
			return
		case <-leaseT.C:
			e.renewLease(ctx, node)
		case <-statusT.C:
			cur, err := e.client.CoreV1().Nodes().Get(ctx, e.cfg.Node.Name, metav1.GetOptions{})
			if err != nil {
				e.log.WarnContext(ctx, "get own node", "err", err)
				continue
			}
			want := e.nodeStatus(cur.Status, time.Now())
			if nodeReady(want) == nodeReady(cur.Status) && time.Since(lastPost) < statusReportAge {
				continue
			}
			n, err := e.postNodeStatus(ctx, cur)
			if err != nil {
				e.log.WarnContext(ctx, "post node status", "err", err)
				continue
			}
			if nodeReady(n.Status) != nodeReady(cur.Status) {
				e.log.InfoContext(ctx, "node readiness changed", "ready", nodeReady(n.Status))
			}
			node, lastPost = n, time.Now()
		}
	}
}

// renewLease creates or renews the node's Lease in kube-node-lease.
func (e *Emulator) renewLease(ctx context.Context, node *v1.Node) {
	leases := e.client.CoordinationV1().Leases(leaseNamespace)
	now := metav1.NewMicroTime(time.Now())
	name := e.cfg.Node.Name
	l, err := leases.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		dur := int32(leaseDuration)
		l = &coordv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: leaseNamespace,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: coordv1.LeaseSpec{HolderIdentity: &name, LeaseDurationSeconds: &dur, RenewTime: &now},
		}
		if _, err := leases.Create(ctx, l, metav1.CreateOptions{}); err != nil && ctx.Err() == nil {
			e.log.WarnContext(ctx, "create node lease", "err", err)
		}
		return
	}
	if err != nil {
		if ctx.Err() == nil {
			e.log.WarnContext(ctx, "get node lease", "err", err)
		}
		return
	}
	l.Spec.RenewTime = &now
	l.Spec.HolderIdentity = &name
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil && ctx.Err() == nil {
		e.log.WarnContext(ctx, "renew node lease", "err", err)
	}
}
