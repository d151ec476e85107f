package nodeemu

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

const validConflist = `{"cniVersion":"1.0.0","name":"weft","plugins":[{"type":"weft-not-installed"}]}`

// A hostNetwork DaemonSet-style pod through the whole emulator (fake API):
// ServiceAccount token volume written via a pod-bound TokenRequest, init
// container then container run as processes with resolved env, status
// Running/Ready with the node IP, and on delete SIGTERM + object removal.
func TestHostNetworkPodThroughEmulator(t *testing.T) {
	dir := t.TempDir()
	saDir := filepath.Join(dir, "sa") // stands for /var/run/secrets/kubernetes.io/serviceaccount
	cniDir := filepath.Join(dir, "cni-net.d")
	bin := filepath.Join(dir, "img")
	for _, d := range []string{saDir, cniDir, bin} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	termFile := filepath.Join(dir, "term")
	writeFile(t, filepath.Join(bin, "weftd"), `#!/bin/sh
echo "token=$(cat `+saDir+`/token) ns=$(cat `+saDir+`/namespace) api=$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT node=$NODE_NAME"
trap 'echo term > `+termFile+`; exit 0' TERM
while :; do sleep 0.05; done
`)
	if err := chmodX(filepath.Join(bin, "weftd")); err != nil {
		t.Fatal(err)
	}

	client := fake.NewClientset(&v1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-root-ca.crt"},
		Data:       map[string]string{"ca.crt": "CA-PEM"},
	})
	var tokenReq *authv1.TokenRequest
	client.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		ca, ok := a.(k8stesting.CreateAction)
		if !ok || a.GetSubresource() != "token" {
			return false, nil, nil
		}
		tokenReq = ca.GetObject().(*authv1.TokenRequest).DeepCopy()
		out := tokenReq.DeepCopy()
		out.Status = authv1.TokenRequestStatus{Token: "tok-123", ExpirationTimestamp: metav1.NewTime(time.Now().Add(time.Hour))}
		return true, out, nil
	})

	exp := int64(3607)
	grace := int64(10)
	pod := &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "weft-abc", UID: "uid-weft-abc"},
		Spec: v1.PodSpec{
			NodeName: "node-h", HostNetwork: true, ServiceAccountName: "weft", RestartPolicy: v1.RestartPolicyAlways,
			TerminationGracePeriodSeconds: &grace,
			Volumes: []v1.Volume{
				{Name: "cni-conf", VolumeSource: v1.VolumeSource{HostPath: &v1.HostPathVolumeSource{Path: cniDir}}},
				{Name: "kube-api-access", VolumeSource: v1.VolumeSource{Projected: &v1.ProjectedVolumeSource{Sources: []v1.VolumeProjection{
					{ServiceAccountToken: &v1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &exp}},
					{ConfigMap: &v1.ConfigMapProjection{LocalObjectReference: v1.LocalObjectReference{Name: "kube-root-ca.crt"},
						Items: []v1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}}}},
					{DownwardAPI: &v1.DownwardAPIProjection{Items: []v1.DownwardAPIVolumeFile{
						{Path: "namespace", FieldRef: &v1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
				}}}},
			},
			InitContainers: []v1.Container{{Name: "install-cni", Image: "weft:dev",
				Command:      []string{"sh", "-c", "sleep 0.3; echo '" + validConflist + "' > " + cniDir + "/10-weft.conflist"},
				VolumeMounts: []v1.VolumeMount{{Name: "cni-conf", MountPath: cniDir}}}},
			Containers: []v1.Container{{Name: "weftd", Image: "ghcr.io/weftnet/weftd:dev", // no command: the image name
				Env: []v1.EnvVar{{Name: "NODE_NAME", ValueFrom: &v1.EnvVarSource{FieldRef: &v1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}}},
				VolumeMounts: []v1.VolumeMount{{Name: "cni-conf", MountPath: cniDir},
					{Name: "kube-api-access", MountPath: saDir, ReadOnly: true}}}},
		},
	}
	if _, err := client.CoreV1().Pods("kube-system").Create(context.Background(), pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	cfg := Config{
		Node:     NodeOptions{Name: "node-h", IP: "172.31.9.9", LeaseInterval: time.Second, StatusInterval: time.Second},
		CNI:      CNIOptions{ConfDir: cniDir, CacheDir: filepath.Join(dir, "cache"), NetnsDir: filepath.Join(dir, "netns")},
		Proc:     ProcOptions{ImageBinDir: bin, BackoffBase: 50 * time.Millisecond, BackoffMax: 200 * time.Millisecond},
		StateDir: filepath.Join(dir, "state"),
		APIHost:  "172.31.0.1", APIPort: "6443",
		RetryBase: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond,
	}
	emu, err := New(cfg, client, quietLog())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- emu.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})

	// Before install-cni ran the node is NotReady and an ordinary pod gets
	// kubelet's NetworkNotReady event.
	waitFor(t, "node NotReady without a CNI config", 5*time.Second, func() bool {
		n, err := client.CoreV1().Nodes().Get(ctx, "node-h", metav1.GetOptions{})
		return err == nil && nodeReady(n.Status) == v1.ConditionFalse
	})
	plain := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "plain", UID: "uid-plain"},
		Spec: v1.PodSpec{NodeName: "node-h", Containers: []v1.Container{{Name: "c", Image: "c"}}}}
	if _, err := client.CoreV1().Pods("kube-system").Create(ctx, plain, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "NetworkNotReady event", 5*time.Second, func() bool {
		evs, _ := client.CoreV1().Events("kube-system").List(ctx, metav1.ListOptions{})
		for _, ev := range evs.Items {
			if ev.Reason == "NetworkNotReady" && ev.InvolvedObject.Name == "plain" && ev.Source.Component == "kubelet" {
				return true
			}
		}
		return false
	})

	get := func() *v1.Pod {
		p, err := client.CoreV1().Pods("kube-system").Get(ctx, "weft-abc", metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return p
	}
	waitFor(t, "hostNetwork pod Running and Ready", 10*time.Second, func() bool {
		p := get()
		if p == nil || p.Status.Phase != v1.PodRunning || p.Status.PodIP != "172.31.9.9" {
			return false
		}
		for _, c := range p.Status.Conditions {
			if c.Type == v1.PodReady {
				return c.Status == v1.ConditionTrue
			}
		}
		return false
	})
	p := get()
	if ic := p.Status.InitContainerStatuses; len(ic) != 1 || ic[0].State.Terminated == nil || ic[0].State.Terminated.ExitCode != 0 {
		t.Fatalf("init container status %+v", ic)
	}
	if _, err := os.Stat(filepath.Join(cniDir, "10-weft.conflist")); err != nil {
		t.Fatalf("install-cni did not write through its hostPath: %v", err)
	}
	waitFor(t, "node Ready once the CNI config is installed", 5*time.Second, func() bool {
		n, err := client.CoreV1().Nodes().Get(ctx, "node-h", metav1.GetOptions{})
		return err == nil && nodeReady(n.Status) == v1.ConditionTrue
	})
	if tokenReq == nil || tokenReq.Spec.BoundObjectRef == nil || tokenReq.Spec.BoundObjectRef.Kind != "Pod" ||
		tokenReq.Spec.BoundObjectRef.UID != "uid-weft-abc" || *tokenReq.Spec.ExpirationSeconds != 3607 {
		t.Fatalf("token request %+v is not pod-bound", tokenReq)
	}
	for f, want := range map[string]string{"token": "tok-123", "ca.crt": "CA-PEM", "namespace": "kube-system"} {
		if b, err := os.ReadFile(filepath.Join(saDir, f)); err != nil || string(b) != want {
			t.Fatalf("%s = %q, %v; want %q", f, b, err, want)
		}
	}
	logPath := filepath.Join(cfg.StateDir, "logs", "kube-system_weft-abc_weftd.log")
	waitFor(t, "weftd log line", 5*time.Second, func() bool {
		b, _ := os.ReadFile(logPath)
		return strings.Contains(string(b), "token=tok-123 ns=kube-system api=172.31.0.1:6443 node=node-h")
	})

	now := metav1.Now()
	p.DeletionTimestamp, p.DeletionGracePeriodSeconds = &now, &grace
	if _, err := client.CoreV1().Pods("kube-system").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "pod deleted after its processes stopped", 10*time.Second, func() bool {
		_, err := client.CoreV1().Pods("kube-system").Get(ctx, "weft-abc", metav1.GetOptions{})
		return apierrors.IsNotFound(err)
	})
	if b, err := os.ReadFile(termFile); err != nil || strings.TrimSpace(string(b)) != "term" {
		t.Fatalf("weftd did not get SIGTERM before the pod was deleted: %q, %v", b, err)
	}
}
