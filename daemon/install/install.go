// Package install puts weft into the node's CNI directories: the plugin
// binaries into /opt/cni/bin and the network configuration list into
// /etc/cni/net.d, each file written to a temporary name in the target
// directory and renamed into place, so a runtime never sees half a file.
package install

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/weftnet/weft/internal/atomicfile"
	"github.com/weftnet/weft/internal/names"
)

// Defaults.
const (
	ConflistName   = "10-weft.conflist"
	NetworkName    = "weft"
	DefaultBridge  = names.Bridge
	DefaultConfDir = "/etc/cni/net.d"
	DefaultBinDir  = "/opt/cni/bin"
)

// The plugins weft ships: the bridge plugin and its IPAM.
const (
	PluginType     = "weft"
	IPAMPluginType = "weft-ipam"
)

// referencePlugins are the reference plugins the conflist chains after
// weft, as it names them. They are the one list of them: Conflist renders
// it and ConflistBinaries derives the binaries from it.
func referencePlugins() []map[string]any {
	return []map[string]any{
		{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}, "snat": true},
		{"type": "bandwidth", "capabilities": map[string]bool{"bandwidth": true}},
	}
}

// ConflistBinaries returns every plugin binary the conflist names: weft,
// its IPAM, then the chained reference plugins.
func ConflistBinaries() []string {
	out := Own()
	for _, p := range referencePlugins() {
		out = append(out, p["type"].(string))
	}
	return out
}

// Binaries returns the plugins to install: the conflist's, plus loopback
// which runtimes add on their own.
func Binaries() []string { return append(ConflistBinaries(), "loopback") }

// Own returns the plugins weft itself ships; the others in Binaries are
// the reference plugins, which a node may already have from its runtime's
// package.
func Own() []string { return []string{PluginType, IPAMPluginType} }

// MissingBinaries lists the conflist's plugins absent from dir.
func MissingBinaries(dir string) []string {
	var missing []string
	for _, p := range ConflistBinaries() {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			missing = append(missing, p)
		}
	}
	return missing
}

// CopyBinaries copies each named file from src to dst atomically. A file
// whose content is already in place is left alone. A reference plugin (not
// in Own) missing from src is accepted when dst already has one. It
// returns the names it wrote.
func CopyBinaries(src, dst string, names []string) ([]string, error) {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return nil, fmt.Errorf("create %s: %w", dst, err)
	}
	var wrote []string
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(src, n))
		if errors.Is(err, fs.ErrNotExist) && !slices.Contains(Own(), n) {
			if st, serr := os.Stat(filepath.Join(dst, n)); serr == nil && st.Mode().IsRegular() {
				continue // the node's own copy stays
			}
		}
		if err != nil {
			return wrote, fmt.Errorf("plugin %s: %w", n, err)
		}
		changed, err := writeAtomic(filepath.Join(dst, n), data, 0o755)
		if err != nil {
			return wrote, err
		}
		if changed {
			wrote = append(wrote, n)
		}
	}
	return wrote, nil
}

// writeAtomic replaces path with data unless it already holds exactly that
// (content and mode). It reports whether it wrote.
func writeAtomic(path string, data []byte, mode fs.FileMode) (bool, error) {
	if same, _ := sameContent(path, data, mode); same {
		return false, nil
	}
	if err := atomicfile.Write(path, data, mode); err != nil {
		return false, err
	}
	return true, nil
}

func sameContent(path string, data []byte, mode fs.FileMode) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() != int64(len(data)) || st.Mode().Perm() != mode.Perm() {
		return false, err
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return false, err
	}
	want := sha256.Sum256(data)
	return bytes.Equal(h.Sum(nil), want[:]), nil
}

// ConflistOptions shape the network configuration list.
type ConflistOptions struct {
	CNIVersion string
	SubnetFile string
	// MTU for pod interfaces (the backend's); 0 leaves it to the plugin.
	MTU    int
	Bridge string
	// EndpointDir and PolicySocket, when set, make the plugin record each
	// attachment for the policy engine and wait until its rules are in.
	EndpointDir  string
	PolicySocket string
	// ShapingSocket, when set, makes weft shape pod bandwidth through
	// weftd (shaping/): weft declares the bandwidth and pod-annotations
	// capabilities and the reference bandwidth plugin leaves the list, so
	// no pod is shaped twice.
	ShapingSocket string
}

// Conflist renders the configuration list: weft (with weft-ipam reading
// the node subnet file), then the reference portmap and bandwidth plugins.
// weftd masquerades itself, so the plugin's ipMasq is off.
func Conflist(o ConflistOptions) ([]byte, error) {
	if o.CNIVersion == "" || o.SubnetFile == "" {
		return nil, errors.New("conflist: cniVersion and subnet file are required")
	}
	bridge := o.Bridge
	if bridge == "" {
		bridge = DefaultBridge
	}
	weft := map[string]any{
		"type":             PluginType,
		"bridge":           bridge,
		"isGateway":        true,
		"isDefaultGateway": true,
		"hairpinMode":      true,
		"ipMasq":           false,
		"ipam":             map[string]any{"type": IPAMPluginType, "subnetFile": o.SubnetFile},
	}
	if o.MTU > 0 {
		weft["mtu"] = o.MTU
	}
	if o.EndpointDir != "" {
		weft["endpointDir"] = o.EndpointDir
	}
	if o.PolicySocket != "" {
		weft["policySocket"] = o.PolicySocket
	}
	if o.ShapingSocket != "" {
		weft["shapingSocket"] = o.ShapingSocket
		weft["capabilities"] = map[string]bool{"bandwidth": true, "io.kubernetes.cri.pod-annotations": true}
	}
	plugins := []any{weft}
	for _, p := range referencePlugins() {
		if o.ShapingSocket != "" && p["type"] == "bandwidth" {
			continue
		}
		plugins = append(plugins, p)
	}
	list := map[string]any{"cniVersion": o.CNIVersion, "name": NetworkName, "plugins": plugins}
	data, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("conflist: %w", err)
	}
	return append(data, '\n'), nil
}

// WriteConflist writes data as dir/10-weft.conflist atomically; it reports
// whether the file changed.
func WriteConflist(dir string, data []byte) (bool, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", dir, err)
	}
	return writeAtomic(filepath.Join(dir, ConflistName), data, 0o644)
}

// RemoveConflist deletes weft's conflist; a missing file is success.
func RemoveConflist(dir string) error {
	err := os.Remove(filepath.Join(dir, ConflistName))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove conflist: %w", err)
	}
	return nil
}

// OtherConfigs lists the CNI configuration files in dir that are not
// weft's, in the order a runtime considers them (lexicographic). Any that
// sort before weft's shadow it: the runtime uses the first.
func OtherConfigs(dir string) (others []string, shadowing []string, err error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil, nil
		}
		return nil, nil, fmt.Errorf("read %s: %w", dir, err)
	}
	for _, e := range ents {
		n := e.Name()
		if e.IsDir() || n == ConflistName || strings.HasPrefix(n, ".") {
			continue
		}
		switch filepath.Ext(n) {
		case ".conf", ".conflist", ".json":
			others = append(others, n)
			if n < ConflistName {
				shadowing = append(shadowing, n)
			}
		}
	}
	slices.Sort(others)
	slices.Sort(shadowing)
	return others, shadowing, nil
}
