package cluster

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// imageRootfsFlag unpacks Options.Image, if set, and returns the node
// emulator's --image-rootfs value ("" without an image).
func (c *Cluster) imageRootfsFlag(flags map[string]bool) (string, error) {
	if c.opt.Image == "" {
		return "", nil
	}
	if !flags["image-rootfs"] {
		return "", errors.New("--image: the built node emulator has no --image-rootfs (run hack/localcluster build)")
	}
	dir, repos, err := c.imageRootfs(c.opt.Image)
	if err != nil {
		return "", err
	}
	var kv []string
	for _, r := range repos {
		kv = append(kv, r+"="+dir)
	}
	return strings.Join(kv, ","), nil
}

// savedImage is the part of a `docker save` archive's manifest.json used
// here: the image config's file name (its digest) and the layers in order.
type savedImage struct {
	Config   string   `json:"Config"`
	RepoTags []string `json:"RepoTags"`
	Layers   []string `json:"Layers"`
}

// imageRootfs unpacks the image in the `docker save` archive file into
// <state>/image-rootfs/<config digest> (reused when already complete) and
// returns the directory and the image's repositories (no tag), for the node
// emulator's --image-rootfs.
func (c *Cluster) imageRootfs(file string) (string, []string, error) {
	img, err := readSavedManifest(file)
	if err != nil {
		return "", nil, err
	}
	var repos []string
	for _, rt := range img.RepoTags {
		if i := strings.LastIndex(rt, ":"); i > strings.LastIndex(rt, "/") {
			rt = rt[:i]
		}
		repos = append(repos, rt)
	}
	if len(repos) == 0 {
		return "", nil, fmt.Errorf("image archive %s: the image has no repository tag", file)
	}
	id := strings.TrimSuffix(path.Base(img.Config), ".json")
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	base := c.path("image-rootfs")
	dir := filepath.Join(base, id)
	if _, err := os.Stat(dir + ".complete"); err == nil {
		return dir, repos, nil
	}
	if err := os.RemoveAll(base); err != nil {
		return "", nil, fmt.Errorf("remove old image rootfs: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", nil, err
	}
	for _, l := range img.Layers {
		if err := extractLayer(file, l, dir); err != nil {
			return "", nil, fmt.Errorf("image archive %s layer %s: %w", file, l, err)
		}
	}
	if err := os.WriteFile(dir+".complete", nil, 0o644); err != nil {
		return "", nil, err
	}
	c.log.Info("unpacked image for the DaemonSet's containers", "archive", file, "rootfs", dir, "repositories", repos)
	return dir, repos, nil
}

func readSavedManifest(file string) (*savedImage, error) {
	var imgs []savedImage
	err := eachEntry(file, func(h *tar.Header, r io.Reader) (bool, error) {
		if h.Name != "manifest.json" {
			return false, nil
		}
		return true, json.NewDecoder(r).Decode(&imgs)
	})
	if err != nil {
		return nil, fmt.Errorf("image archive %s: %w", file, err)
	}
	if len(imgs) != 1 {
		return nil, fmt.Errorf("image archive %s: want one image in manifest.json, found %d", file, len(imgs))
	}
	return &imgs[0], nil
}

// eachEntry calls f for each entry of the tar file until f says stop.
func eachEntry(file string, f func(*tar.Header, io.Reader) (stop bool, err error)) error {
	fh, err := os.Open(file)
	if err != nil {
		return err
	}
	defer fh.Close()
	tr := tar.NewReader(fh)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		stop, err := f(h, tr)
		if err != nil || stop {
			return err
		}
	}
}

// extractLayer applies one layer (a tar inside the archive) to dir, with
// the OCI whiteout rules: ".wh.NAME" deletes NAME of the lower layers,
// ".wh..wh..opq" empties its directory of them.
func extractLayer(file, layer, dir string) error {
	found := false
	err := eachEntry(file, func(h *tar.Header, r io.Reader) (bool, error) {
		if h.Name != layer {
			return false, nil
		}
		found = true
		tr := tar.NewReader(r)
		for {
			lh, err := tr.Next()
			if errors.Is(err, io.EOF) {
				return true, nil
			}
			if err != nil {
				return true, err
			}
			if err := applyEntry(dir, lh, tr); err != nil {
				return true, fmt.Errorf("%s: %w", lh.Name, err)
			}
		}
	})
	if err == nil && !found {
		err = errors.New("not in the archive")
	}
	return err
}

func applyEntry(dir string, h *tar.Header, r io.Reader) error {
	name := path.Clean("/" + h.Name)
	if name == "/" {
		return nil
	}
	target := filepath.Join(dir, name)
	parent, base := filepath.Dir(target), filepath.Base(target)
	switch {
	case base == ".wh..wh..opq":
		ents, err := os.ReadDir(parent)
		if err != nil && !os.IsNotExist(err) {
			return err
		}
		for _, e := range ents {
			if err := os.RemoveAll(filepath.Join(parent, e.Name())); err != nil {
				return err
			}
		}
		return nil
	case strings.HasPrefix(base, ".wh."):
		return os.RemoveAll(filepath.Join(parent, strings.TrimPrefix(base, ".wh.")))
	}
	if err := noSymlinkBetween(dir, parent); err != nil {
		return err
	}
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return err
	}
	if err := writeEntry(dir, target, h, r); err != nil {
		return err
	}
	if h.Typeflag == tar.TypeDir || h.Typeflag == tar.TypeReg || h.Typeflag == tar.TypeSymlink || h.Typeflag == tar.TypeLink {
		return os.Lchown(target, h.Uid, h.Gid)
	}
	return nil
}

// noSymlinkBetween refuses a path that would leave dir through a symlink
// of the image (an absolute one such as /var/run -> /run points at the
// node's own file system).
func noSymlinkBetween(dir, p string) error {
	for q := p; len(q) > len(dir); q = filepath.Dir(q) {
		if fi, err := os.Lstat(q); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return fmt.Errorf("path passes through the symlink %s", q)
		}
	}
	return nil
}

func writeEntry(dir, target string, h *tar.Header, r io.Reader) error {
	mode := os.FileMode(h.Mode).Perm() | os.FileMode(h.Mode)&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)
	switch h.Typeflag {
	case tar.TypeDir:
		if fi, err := os.Lstat(target); err == nil && !fi.IsDir() {
			_ = os.RemoveAll(target)
		}
		if err := os.MkdirAll(target, 0o755); err != nil {
			return err
		}
		return os.Chmod(target, mode)
	case tar.TypeSymlink:
		_ = os.RemoveAll(target)
		return os.Symlink(h.Linkname, target)
	case tar.TypeLink:
		_ = os.RemoveAll(target)
		return os.Link(filepath.Join(dir, path.Clean("/"+h.Linkname)), target)
	case tar.TypeReg:
		_ = os.RemoveAll(target)
		f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_EXCL, mode)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
		return os.Chmod(target, mode) // umask
	default:
		return nil // device nodes and fifos: the container gets the node's /dev
	}
}
