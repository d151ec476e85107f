package nodeemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/containernetworking/cni/libcni"
	cnitypes "github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// CNIOptions locate the node's CNI world (its private bind mounts).
type CNIOptions struct {
	ConfDir  string   // network configs; the first one is used
	BinDirs  []string // plugin binaries
	CacheDir string   // libcni's result cache
	NetnsDir string   // where pod netns files live (normally /run/netns)
	// MaxResultVersion is the newest CNI result version the emulated
	// runtime accepts; a newer one fails the pod, as containerd 1.6 fails
	// a 1.1.0 result. "" accepts any (containerd >= 1.7, CRI-O).
	MaxResultVersion string
}

// cniTimeout bounds one ADD or DEL chain (a hung plugin must not hold a
// worker forever).
const cniTimeout = 2 * time.Minute

// sandboxes plays the container runtime's network half: pod netns + CNI.
type sandboxes struct {
	opts CNIOptions
	cni  *libcni.CNIConfig
	log  *slog.Logger
}

func newSandboxes(opts CNIOptions, log *slog.Logger) *sandboxes {
	return &sandboxes{
		opts: opts,
		cni:  libcni.NewCNIConfigWithCacheDir(opts.BinDirs, opts.CacheDir, nil),
		log:  log,
	}
}

func (s *sandboxes) netnsPath(uid types.UID) string {
	return filepath.Join(s.opts.NetnsDir, NetnsName(uid))
}

// setUp creates the pod's netns and runs CNI ADD. On failure it undoes
// what it did (DEL, netns removal), as containerd does, and returns the
// CNI error for the pod's event.
func (s *sandboxes) setUp(ctx context.Context, pod *v1.Pod) ([]string, error) {
	path := s.netnsPath(pod.UID)
	if _, err := os.Lstat(path); err == nil {
		// Left over from an earlier attempt (or a dead mount whose
		// namespace is gone): DEL and start clean.
		if err := s.tearDown(ctx, pod.Namespace, pod.Name, pod.UID); err != nil {
			return nil, fmt.Errorf("clean up previous sandbox: %w", err)
		}
	}
	list, file, err := LoadNetwork(s.opts.ConfDir)
	if err != nil {
		return nil, err
	}
	caps, err := CapabilityArgs(pod)
	if err != nil {
		return nil, fmt.Errorf("capability args: %w", err)
	}
	if err := createNetns(path); err != nil {
		return nil, err
	}
	id := SandboxID(pod.UID)
	rt := &libcni.RuntimeConf{
		ContainerID:    id,
		NetNS:          path,
		IfName:         podIfName,
		Args:           CNIArgs(pod, id),
		CapabilityArgs: caps,
	}
	actx, cancel := context.WithTimeout(ctx, cniTimeout)
	defer cancel()
	res, err := s.cni.AddNetworkList(actx, list, rt)
	if err != nil {
		addErr := err // libcni says which plugin failed: plugin type="..." failed (add): ...
		if derr := s.cni.DelNetworkList(context.WithoutCancel(ctx), list, rt); derr != nil {
			s.log.WarnContext(ctx, "CNI DEL after failed ADD", "pod", pod.Namespace+"/"+pod.Name, "err", derr)
		}
		if rerr := removeNetns(path); rerr != nil {
			s.log.WarnContext(ctx, "remove netns after failed ADD", "path", path, "err", rerr)
		}
		return nil, addErr
	}
	if err := s.acceptVersion(res); err != nil {
		_ = s.cni.DelNetworkList(context.WithoutCancel(ctx), list, rt)
		_ = removeNetns(path)
		return nil, fmt.Errorf("CNI result from %s: %w", file, err)
	}
	ips, err := resultIPs(res)
	if err != nil {
		_ = s.cni.DelNetworkList(context.WithoutCancel(ctx), list, rt)
		_ = removeNetns(path)
		return nil, fmt.Errorf("CNI result from %s: %w", file, err)
	}
	s.log.InfoContext(ctx, "pod network set up", "pod", pod.Namespace+"/"+pod.Name,
		"network", list.Name, "conf", file, "ips", ips, "netns", path)
	return ips, nil
}

// acceptVersion rejects a result newer than the runtime understands.
func (s *sandboxes) acceptVersion(res cnitypes.Result) error {
	if s.opts.MaxResultVersion == "" {
		return nil
	}
	newer, err := version.GreaterThan(res.Version(), s.opts.MaxResultVersion)
	if err != nil {
		return fmt.Errorf("result version %q: %w", res.Version(), err)
	}
	if newer {
		return fmt.Errorf("incompatible CNI result version %s: this runtime accepts up to %s (as containerd 1.6 does)",
			res.Version(), s.opts.MaxResultVersion)
	}
	return nil
}

// resultIPs picks the pod's addresses: those on eth0 inside the sandbox,
// else every address in the result. IPv4 comes first.
func resultIPs(res cnitypes.Result) ([]string, error) {
	r, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, fmt.Errorf("convert result: %w", err)
	}
	ips := pickIPs(r)
	if len(ips) == 0 {
		return nil, errors.New("CNI result carries no IP address")
	}
	return ips, nil
}

func pickIPs(r *current.Result) []string {
	var onEth0, all []net.IP
	for _, ipc := range r.IPs {
		all = append(all, ipc.Address.IP)
		if ipc.Interface != nil && *ipc.Interface >= 0 && *ipc.Interface < len(r.Interfaces) {
			iface := r.Interfaces[*ipc.Interface]
			if iface.Name == podIfName && iface.Sandbox != "" {
				onEth0 = append(onEth0, ipc.Address.IP)
			}
		}
	}
	ips := onEth0
	if len(ips) == 0 {
		ips = all
	}
	sort.SliceStable(ips, func(i, j int) bool { return ips[i].To4() != nil && ips[j].To4() == nil })
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.String())
	}
	return out
}

// tearDown runs CNI DEL for the pod's sandbox (with its netns while it
// exists, so plugins get prevResult from libcni's cache) and removes the
// netns. Missing netns or cache entries are success, like a second DEL.
func (s *sandboxes) tearDown(ctx context.Context, namespace, name string, uid types.UID) error {
	path := s.netnsPath(uid)
	id := SandboxID(uid)
	att, _ := s.cachedAttachment(id)
	if _, err := os.Lstat(path); att == nil && errors.Is(err, os.ErrNotExist) {
		return nil // no sandbox was ever set up (or it is gone already)
	}
	list, _, loadErr := LoadNetwork(s.opts.ConfDir)
	if list == nil && att != nil {
		// The node's config is gone (e.g. weftd removed it): DEL with the
		// config the pod was set up with.
		list, loadErr = libcni.ConfListFromBytes(att.Config)
	}
	var delErr error
	switch {
	case list != nil:
		rt := &libcni.RuntimeConf{
			ContainerID: id,
			IfName:      podIfName,
			Args: CNIArgs(&v1.Pod{ObjectMeta: metav1.ObjectMeta{
				Namespace: namespace, Name: name, UID: uid}}, id),
		}
		if att != nil {
			rt.CapabilityArgs = att.CapabilityArgs
		}
		if netnsExists(path) {
			rt.NetNS = path
		}
		dctx, cancel := context.WithTimeout(ctx, cniTimeout)
		defer cancel()
		// Like containerd 1.6: DEL on stop (with netns; libcni adds
		// prevResult from its cache), netns removed, DEL again on remove
		// (empty CNI_NETNS, no prevResult). Plugins must take both.
		delErr = s.cni.DelNetworkList(dctx, list, rt)
		if delErr == nil {
			if err := removeNetns(path); err != nil {
				return err
			}
			rt.NetNS = ""
			delErr = s.cni.DelNetworkList(dctx, list, rt)
		}
	case att != nil || netnsExists(path):
		delErr = fmt.Errorf("CNI DEL impossible, no network config: %w", loadErr)
	}
	if delErr != nil {
		return delErr
	}
	return removeNetns(path)
}

// cachedAttachment returns libcni's cache entry for a sandbox, if any.
func (s *sandboxes) cachedAttachment(id string) (*libcni.NetworkAttachment, error) {
	atts, err := s.cni.GetCachedAttachments(id)
	if err != nil {
		return nil, fmt.Errorf("read libcni cache: %w", err)
	}
	for _, a := range atts {
		if a.IfName == podIfName {
			return a, nil
		}
	}
	return nil, nil
}

// staleAttachments lists cached attachments whose pod UID is not in keep.
func (s *sandboxes) staleAttachments(keep map[types.UID]bool) ([]*libcni.NetworkAttachment, error) {
	atts, err := s.cni.GetCachedAttachments("")
	if err != nil {
		return nil, fmt.Errorf("read libcni cache: %w", err)
	}
	var out []*libcni.NetworkAttachment
	for _, a := range atts {
		uid := argValue(a.CniArgs, "K8S_POD_UID")
		if uid == "" || !keep[types.UID(uid)] {
			out = append(out, a)
		}
	}
	return out, nil
}

// delAttachment sends DEL for a cached attachment whose pod is gone.
func (s *sandboxes) delAttachment(ctx context.Context, a *libcni.NetworkAttachment) error {
	list, _, err := LoadNetwork(s.opts.ConfDir)
	if err != nil {
		list, err = libcni.ConfListFromBytes(a.Config)
		if err != nil {
			return fmt.Errorf("no network config for stale attachment %s: %w", a.ContainerID, err)
		}
	}
	rt := &libcni.RuntimeConf{
		ContainerID:    a.ContainerID,
		IfName:         a.IfName,
		Args:           a.CniArgs,
		CapabilityArgs: a.CapabilityArgs,
	}
	if a.NetNS != "" && netnsExists(a.NetNS) {
		rt.NetNS = a.NetNS
	}
	if err := s.cni.DelNetworkList(ctx, list, rt); err != nil {
		return fmt.Errorf("CNI DEL stale sandbox %s: %w", a.ContainerID, err)
	}
	return nil
}

func argValue(args [][2]string, key string) string {
	for _, kv := range args {
		if kv[0] == key {
			return kv[1]
		}
	}
	return ""
}
