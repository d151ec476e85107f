package nodeemu

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// volumeWriter materializes a hostNetwork pod's volumes for its processes.
// Processes run in the node's own mount namespace, so:
//   - a hostPath volume must be mounted at its own path (a no-op: the
//     node's paths such as /etc/cni/net.d are already its private mounts);
//   - projected / configMap / secret / downwardAPI volumes (the
//     ServiceAccount token above all) are written straight into the mount
//     path, which must exist (the harness provides
//     /var/run/secrets/kubernetes.io/serviceaccount per node);
//   - emptyDir needs an existing mount path too and is shared as is.
type volumeWriter struct {
	client kubernetes.Interface
	env    *envResolver
	caPEM  []byte // fallback ca.crt when the kube-root-ca.crt ConfigMap is unreadable
}

// prepare checks every mount of every container and writes the content of
// the volumes they use. It returns the earliest token expiry (zero if none)
// so the caller can refresh before it.
func (w *volumeWriter) prepare(ctx context.Context, pod *v1.Pod) (time.Time, error) {
	vols := map[string]*v1.Volume{}
	for i := range pod.Spec.Volumes {
		vols[pod.Spec.Volumes[i].Name] = &pod.Spec.Volumes[i]
	}
	var refresh time.Time
	done := map[string]bool{}
	all := append(append([]v1.Container{}, pod.Spec.InitContainers...), pod.Spec.Containers...)
	for _, c := range all {
		for _, m := range c.VolumeMounts {
			v, ok := vols[m.Name]
			if !ok {
				return refresh, fmt.Errorf("container %s mounts unknown volume %q", c.Name, m.Name)
			}
			if m.SubPath != "" || m.SubPathExpr != "" {
				return refresh, fmt.Errorf("container %s volume %q: subPath is not supported by the node emulator", c.Name, m.Name)
			}
			key := v.Name + "\x00" + m.MountPath
			if done[key] {
				continue
			}
			done[key] = true
			exp, err := w.mount(ctx, pod, v, m.MountPath)
			if err != nil {
				return refresh, fmt.Errorf("container %s volume %q at %s: %w", c.Name, m.Name, m.MountPath, err)
			}
			if !exp.IsZero() && (refresh.IsZero() || exp.Before(refresh)) {
				refresh = exp
			}
		}
	}
	return refresh, nil
}

func (w *volumeWriter) mount(ctx context.Context, pod *v1.Pod, v *v1.Volume, path string) (time.Time, error) {
	switch {
	case v.HostPath != nil:
		if filepath.Clean(v.HostPath.Path) != filepath.Clean(path) {
			return time.Time{}, fmt.Errorf("hostPath %s mounted at a different path: the node emulator runs processes in the node's mount namespace and supports only mountPath == hostPath.path", v.HostPath.Path)
		}
		return time.Time{}, ensureHostPath(path, v.HostPath.Type)
	case v.EmptyDir != nil:
		return time.Time{}, requireDir(path)
	}
	files, exp, err := w.volumeFiles(ctx, pod, v)
	if err != nil {
		return time.Time{}, err
	}
	if err := requireDir(path); err != nil {
		return time.Time{}, err
	}
	for name, data := range files {
		if err := writeFileAtomic(filepath.Join(path, name), data); err != nil {
			return time.Time{}, err
		}
	}
	return exp, nil
}

// ensureHostPath applies the hostPath type's create semantics, as kubelet.
func ensureHostPath(path string, typ *v1.HostPathType) error {
	if typ == nil {
		return nil
	}
	switch *typ {
	case v1.HostPathDirectoryOrCreate:
		if err := os.MkdirAll(path, 0o755); err != nil {
			return fmt.Errorf("create hostPath dir: %w", err)
		}
	case v1.HostPathFileOrCreate:
		f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE, 0o644)
		if err != nil {
			return fmt.Errorf("create hostPath file: %w", err)
		}
		_ = f.Close()
	case v1.HostPathDirectory:
		return requireDir(path)
	}
	return nil
}

func requireDir(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("mount path must exist on the node (the harness provides it): %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount path %s is not a directory", path)
	}
	return nil
}

// volumeFiles computes the files of a projected-style volume.
func (w *volumeWriter) volumeFiles(ctx context.Context, pod *v1.Pod, v *v1.Volume) (map[string][]byte, time.Time, error) {
	var sources []v1.VolumeProjection
	switch {
	case v.Projected != nil:
		sources = v.Projected.Sources
	case v.ConfigMap != nil:
		sources = []v1.VolumeProjection{{ConfigMap: &v1.ConfigMapProjection{
			LocalObjectReference: v.ConfigMap.LocalObjectReference, Items: v.ConfigMap.Items, Optional: v.ConfigMap.Optional}}}
	case v.Secret != nil:
		sources = []v1.VolumeProjection{{Secret: &v1.SecretProjection{
			LocalObjectReference: v1.LocalObjectReference{Name: v.Secret.SecretName}, Items: v.Secret.Items, Optional: v.Secret.Optional}}}
	case v.DownwardAPI != nil:
		sources = []v1.VolumeProjection{{DownwardAPI: &v1.DownwardAPIProjection{Items: v.DownwardAPI.Items}}}
	default:
		return nil, time.Time{}, fmt.Errorf("volume type not supported by the node emulator")
	}
	files := map[string][]byte{}
	var exp time.Time
	for _, src := range sources {
		switch {
		case src.ServiceAccountToken != nil:
			tok, e, err := w.token(ctx, pod, src.ServiceAccountToken)
			if err != nil {
				return nil, exp, err
			}
			files[src.ServiceAccountToken.Path] = []byte(tok)
			if exp.IsZero() || e.Before(exp) {
				exp = e
			}
		case src.ConfigMap != nil:
			cm, err := w.client.CoreV1().ConfigMaps(pod.Namespace).Get(ctx, src.ConfigMap.Name, metav1.GetOptions{})
			if err != nil {
				if src.ConfigMap.Name == "kube-root-ca.crt" && len(w.caPEM) > 0 {
					files["ca.crt"] = w.caPEM
					continue
				}
				if optional(src.ConfigMap.Optional) {
					continue
				}
				return nil, exp, fmt.Errorf("configmap %s: %w", src.ConfigMap.Name, err)
			}
			data := map[string][]byte{}
			for k, s := range cm.Data {
				data[k] = []byte(s)
			}
			addItems(files, data, src.ConfigMap.Items)
		case src.Secret != nil:
			s, err := w.client.CoreV1().Secrets(pod.Namespace).Get(ctx, src.Secret.Name, metav1.GetOptions{})
			if err != nil {
				if optional(src.Secret.Optional) {
					continue
				}
				return nil, exp, fmt.Errorf("secret %s: %w", src.Secret.Name, err)
			}
			addItems(files, s.Data, src.Secret.Items)
		case src.DownwardAPI != nil:
			for _, it := range src.DownwardAPI.Items {
				if it.FieldRef == nil {
					return nil, exp, fmt.Errorf("downwardAPI item %s: only fieldRef is supported", it.Path)
				}
				val, err := w.env.fieldValue(pod, it.FieldRef.FieldPath)
				if err != nil {
					return nil, exp, err
				}
				files[it.Path] = []byte(val)
			}
		}
	}
	return files, exp, nil
}

func addItems(files, data map[string][]byte, items []v1.KeyToPath) {
	if len(items) == 0 {
		for k, v := range data {
			files[k] = v
		}
		return
	}
	for _, it := range items {
		if v, ok := data[it.Key]; ok {
			files[it.Path] = v
		}
	}
}

// token requests a pod-bound ServiceAccount token, as kubelet does.
func (w *volumeWriter) token(ctx context.Context, pod *v1.Pod, p *v1.ServiceAccountTokenProjection) (string, time.Time, error) {
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	exp := int64(3607)
	if p.ExpirationSeconds != nil {
		exp = *p.ExpirationSeconds
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
	}}
	if p.Audience != "" {
		req.Spec.Audiences = []string{p.Audience}
	}
	tr, err := w.client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", time.Time{}, fmt.Errorf("request token for serviceaccount %s/%s: %w", pod.Namespace, sa, err)
	}
	expiry := tr.Status.ExpirationTimestamp.Time
	if expiry.IsZero() {
		expiry = time.Now().Add(time.Duration(exp) * time.Second)
	}
	return tr.Status.Token, expiry, nil
}

// writeFileAtomic replaces a file so that readers never see half of it.
func writeFileAtomic(path string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create dir for %s: %w", path, err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".nodeemu-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Chmod(0o644); err != nil {
		_ = tmp.Close()
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("rename into %s: %w", path, err)
	}
	return nil
}
