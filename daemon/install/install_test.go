package install

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

func TestCopyBinaries(t *testing.T) {
	src, dst := t.TempDir(), filepath.Join(t.TempDir(), "opt", "cni", "bin")
	for _, n := range Binaries() {
		if err := os.WriteFile(filepath.Join(src, n), []byte("#!/bin/sh\necho "+n+"\n"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	wrote, err := CopyBinaries(src, dst, Binaries())
	if err != nil || !slices.Equal(wrote, Binaries()) {
		t.Fatalf("first copy wrote %v: %v", wrote, err)
	}
	for _, n := range Binaries() {
		st, err := os.Stat(filepath.Join(dst, n))
		if err != nil || st.Mode().Perm() != 0o755 {
			t.Fatalf("%s: %v %v", n, st, err)
		}
		data, _ := os.ReadFile(filepath.Join(dst, n))
		if !strings.Contains(string(data), "echo "+n) {
			t.Fatalf("%s content %q", n, data)
		}
	}
	// Idempotent: nothing rewritten, no temp files left.
	inode := ino(t, filepath.Join(dst, "weft"))
	wrote, err = CopyBinaries(src, dst, Binaries())
	if err != nil || len(wrote) != 0 || ino(t, filepath.Join(dst, "weft")) != inode {
		t.Fatalf("second copy wrote %v: %v", wrote, err)
	}
	// A changed binary is replaced by rename (new inode: a running process
	// keeps its old file).
	if err := os.WriteFile(filepath.Join(src, "weft"), []byte("v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	wrote, err = CopyBinaries(src, dst, Binaries())
	if err != nil || !slices.Equal(wrote, []string{"weft"}) || ino(t, filepath.Join(dst, "weft")) == inode {
		t.Fatalf("update wrote %v: %v", wrote, err)
	}
	ents, _ := os.ReadDir(dst)
	if len(ents) != len(Binaries()) {
		t.Fatalf("stray files: %v", ents)
	}
	// Missing source: error naming the plugin.
	if _, err := CopyBinaries(src, dst, []string{"nope"}); err == nil || !strings.Contains(err.Error(), "plugin nope") {
		t.Fatalf("missing source: %v", err)
	}
	// A reference plugin missing from the image is fine when the node has
	// one; weft's own plugins are always required.
	_ = os.Remove(filepath.Join(src, "portmap"))
	if wrote, err := CopyBinaries(src, dst, Binaries()); err != nil || len(wrote) != 0 {
		t.Fatalf("node's own portmap: %v %v", wrote, err)
	}
	_ = os.Remove(filepath.Join(dst, "portmap"))
	if _, err := CopyBinaries(src, dst, Binaries()); err == nil || !strings.Contains(err.Error(), "plugin portmap") {
		t.Fatalf("portmap nowhere: %v", err)
	}
	_ = os.Remove(filepath.Join(src, "weft"))
	if _, err := CopyBinaries(src, dst, []string{"weft"}); err == nil {
		t.Fatal("missing weft accepted because the node had one")
	}
}

func ino(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return sysIno(st)
}

func TestConflistPerVersion(t *testing.T) {
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			data, err := Conflist(ConflistOptions{CNIVersion: v, SubnetFile: "/run/weft/subnet.json", MTU: 1450})
			if err != nil {
				t.Fatal(err)
			}
			list, err := libcni.ConfListFromBytes(data)
			if err != nil {
				t.Fatalf("libcni rejects list: %v", err)
			}
			if list.CNIVersion != v || list.Name != "weft" || len(list.Plugins) != 3 {
				t.Fatalf("list %+v", list)
			}
			var types []string
			for _, p := range list.Plugins {
				types = append(types, p.Network.Type)
			}
			if !slices.Equal(types, []string{"weft", "portmap", "bandwidth"}) {
				t.Fatalf("chain %v", types)
			}
			var w struct {
				Bridge           string `json:"bridge"`
				MTU              int    `json:"mtu"`
				IsGateway        bool   `json:"isGateway"`
				IsDefaultGateway bool   `json:"isDefaultGateway"`
				IPMasq           bool   `json:"ipMasq"`
				IPAM             struct {
					Type       string `json:"type"`
					SubnetFile string `json:"subnetFile"`
				} `json:"ipam"`
			}
			if err := json.Unmarshal(list.Plugins[0].Bytes, &w); err != nil {
				t.Fatal(err)
			}
			if w.Bridge != "weft0" || w.MTU != 1450 || !w.IsGateway || !w.IsDefaultGateway || w.IPMasq || w.IPAM.Type != "weft-ipam" || w.IPAM.SubnetFile != "/run/weft/subnet.json" {
				t.Fatalf("weft plugin config %+v", w)
			}
			var pm struct {
				Capabilities map[string]bool `json:"capabilities"`
				SNAT         bool            `json:"snat"`
			}
			_ = json.Unmarshal(list.Plugins[1].Bytes, &pm)
			if !pm.Capabilities["portMappings"] || !pm.SNAT {
				t.Fatalf("portmap %s", list.Plugins[1].Bytes)
			}
			_ = json.Unmarshal(list.Plugins[2].Bytes, &pm)
			if !pm.Capabilities["bandwidth"] {
				t.Fatalf("bandwidth %s", list.Plugins[2].Bytes)
			}
		})
	}
	if _, err := Conflist(ConflistOptions{SubnetFile: "/x"}); err == nil {
		t.Fatal("missing cniVersion accepted")
	}
}

func TestWriteRemoveConflistAndOthers(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "net.d")
	data, _ := Conflist(ConflistOptions{CNIVersion: "1.0.0", SubnetFile: "/run/weft/subnet.json"})
	if changed, err := WriteConflist(dir, data); err != nil || !changed {
		t.Fatalf("write: %v %v", changed, err)
	}
	if changed, err := WriteConflist(dir, data); err != nil || changed {
		t.Fatalf("rewrite of same content: %v %v", changed, err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, ConflistName))
	if string(got) != string(data) {
		t.Fatal("content differs")
	}
	for _, n := range []string{"05-other.conf", "99-loopback.conf", "README", ".hidden.conf", "20-x.conflist"} {
		_ = os.WriteFile(filepath.Join(dir, n), []byte("{}"), 0o644)
	}
	others, shadow, err := OtherConfigs(dir)
	if err != nil || !slices.Equal(others, []string{"05-other.conf", "20-x.conflist", "99-loopback.conf"}) || !slices.Equal(shadow, []string{"05-other.conf"}) {
		t.Fatalf("others %v shadow %v %v", others, shadow, err)
	}
	if err := RemoveConflist(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ConflistName)); !os.IsNotExist(err) {
		t.Fatal("conflist still there")
	}
	if err := RemoveConflist(dir); err != nil {
		t.Fatalf("second remove: %v", err)
	}
}

// The binaries weftd checks and installs are exactly the ones the conflist
// it writes names (every plugin type and IPAM type), in chain order; and
// MissingBinaries names those a bin dir lacks.
func TestConflistBinariesMatchConflist(t *testing.T) {
	data, err := Conflist(ConflistOptions{CNIVersion: "1.0.0", SubnetFile: "/run/weft/subnet.json"})
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Plugins []struct {
			Type string `json:"type"`
			IPAM *struct {
				Type string `json:"type"`
			} `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal(data, &list); err != nil {
		t.Fatal(err)
	}
	var named []string
	for _, p := range list.Plugins {
		named = append(named, p.Type)
		if p.IPAM != nil {
			named = append(named, p.IPAM.Type)
		}
	}
	if got := ConflistBinaries(); !slices.Equal(got, named) {
		t.Fatalf("ConflistBinaries() = %v, the conflist names %v", got, named)
	}
	if b := Binaries(); !slices.Equal(b[:len(named)], named) || !slices.Contains(b, "loopback") {
		t.Fatalf("Binaries() = %v", b)
	}
	dir := t.TempDir()
	for _, n := range []string{"weft", "portmap"} {
		if err := os.WriteFile(filepath.Join(dir, n), nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if got := MissingBinaries(dir); !slices.Equal(got, []string{"weft-ipam", "bandwidth"}) {
		t.Fatalf("missing %v", got)
	}
}

// When weftd shapes, weft declares the bandwidth and pod-annotations
// capabilities and names the socket, and the reference bandwidth plugin
// leaves the list (no pod shaped twice); portmap stays.
func TestConflistWhenWeftShapes(t *testing.T) {
	data, err := Conflist(ConflistOptions{CNIVersion: "1.0.0", SubnetFile: "/run/weft/subnet.json",
		EndpointDir: "/run/weft/endpoints", PolicySocket: "/run/weft/weftd.sock", ShapingSocket: "/run/weft/weftd.sock"})
	if err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes(data)
	if err != nil {
		t.Fatal(err)
	}
	var types []string
	for _, p := range list.Plugins {
		types = append(types, p.Network.Type)
	}
	if strings.Join(types, ",") != "weft,portmap" {
		t.Fatalf("plugins %v, want weft,portmap", types)
	}
	var weft struct {
		ShapingSocket string          `json:"shapingSocket"`
		Capabilities  map[string]bool `json:"capabilities"`
	}
	if err := json.Unmarshal(list.Plugins[0].Bytes, &weft); err != nil {
		t.Fatal(err)
	}
	if weft.ShapingSocket != "/run/weft/weftd.sock" || !weft.Capabilities["bandwidth"] || !weft.Capabilities["io.kubernetes.cri.pod-annotations"] {
		t.Fatalf("weft entry %+v", weft)
	}
}
