package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/weftnet/weft/internal/testutil"
)

// e2eImage is the `docker save` archive of Weft's image (make image) the
// cluster runs the DaemonSet from, when WEFT_E2E_IMAGE names one (make test
// does); "" runs it from the built binaries.
func e2eImage(t *testing.T) string {
	p := os.Getenv("WEFT_E2E_IMAGE")
	if p == "" {
		return ""
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(abs); err != nil {
		t.Fatalf("WEFT_E2E_IMAGE: %v (make image writes bin/weft-image.tar)", err)
	}
	return abs
}

// checkRunsFromImage: every weft pod's containers ran inside the image's
// root file system: weftd's process has the unpacked image as its root and
// runs the image's /usr/local/bin/weftd, and the plugins its init container
// installed into each node's /opt/cni/bin (which the node emulator then
// calls for every pod of the test) are byte for byte the image's.
func checkRunsFromImage(t *testing.T, ctx context.Context, client kubernetes.Interface) {
	t.Helper()
	ents, err := filepath.Glob(filepath.Join(testutil.RepoRoot(), ".localcluster", "image-rootfs", "*"))
	var rootfs []string
	for _, e := range ents {
		if fi, err := os.Stat(e); err == nil && fi.IsDir() {
			rootfs = append(rootfs, e)
		}
	}
	if err != nil || len(rootfs) != 1 {
		t.Fatalf("unpacked image rootfs: %v %v", ents, err)
	}
	root := rootfs[0]
	pods, err := client.CoreV1().Pods("kube-system").List(ctx, metav1.ListOptions{LabelSelector: "app=weft"})
	if err != nil || len(pods.Items) != e2eNodes {
		t.Fatalf("weft pods: %v (%d, want %d)", err, len(pods.Items), e2eNodes)
	}
	for _, p := range pods.Items {
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].ContainerID == "" {
			t.Errorf("pod %s: container status %+v", p.Name, p.Status.ContainerStatuses)
			continue
		}
		var pid int
		if _, err := fmt.Sscanf(p.Status.ContainerStatuses[0].ContainerID, "nodeemu://pid-%d", &pid); err != nil {
			t.Errorf("pod %s: container ID %q: %v", p.Name, p.Status.ContainerStatuses[0].ContainerID, err)
			continue
		}
		// The links read from another mount namespace may name the path
		// in either; the inodes must be the image's.
		procRoot, _ := os.Readlink(fmt.Sprintf("/proc/%d/root", pid))
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		if !sameInode(fmt.Sprintf("/proc/%d/root", pid), root) || strings.TrimPrefix(exe, root) != "/usr/local/bin/weftd" ||
			!sameInode(fmt.Sprintf("/proc/%d/exe", pid), filepath.Join(root, "usr/local/bin/weftd")) {
			t.Errorf("pod %s: weftd (pid %d) has root %q and exe %q, want %s and its /usr/local/bin/weftd", p.Name, pid, procRoot, exe, root)
		}
		sameFile(t, fmt.Sprintf("/proc/%d/exe", pid), filepath.Join(root, "usr/local/bin/weftd"))
		node := filepath.Join(testutil.RepoRoot(), ".localcluster", "nodes", p.Spec.NodeName, "opt-cni-bin")
		for _, plugin := range []string{"weft", "weft-ipam", "portmap", "bandwidth", "loopback"} {
			sameFile(t, filepath.Join(node, plugin), filepath.Join(root, "usr/local/bin", plugin))
		}
		t.Logf("pod %s on %s: weftd pid %d runs %s in %s; the node's plugins are the image's", p.Name, p.Spec.NodeName, pid, exe, root)
	}
}

func sameInode(a, b string) bool {
	fa, errA := os.Stat(a)
	fb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(fa, fb)
}

func sameFile(t *testing.T, a, b string) {
	t.Helper()
	da, errA := os.ReadFile(a)
	db, errB := os.ReadFile(b)
	if errA != nil || errB != nil || !bytes.Equal(da, db) {
		t.Errorf("%s and %s differ (%v, %v)", a, b, errA, errB)
	}
}

// upArgsImage adds --image to the up command when the test runs from it.
func upArgsImage(t *testing.T, args []string) []string {
	if img := e2eImage(t); img != "" {
		return append(args, "--image", img)
	}
	return args
}
