package endpoint

import (
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

func sample(veth string) Endpoint {
	return Endpoint{ContainerID: "c1", IfName: "eth0", PodNamespace: "x", PodName: "a",
		PodUID: "uid-1", HostVeth: veth, IPs: []string{"10.244.1.5/24"}}
}

func TestWriteListRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "endpoints")
	if eps, err := List(dir); err != nil || len(eps) != 0 {
		t.Fatalf("missing dir: %v %v", eps, err)
	}
	a, b := sample("wvb"), sample("wva")
	b.PodName = "b"
	for _, ep := range []Endpoint{a, b} {
		if err := Write(dir, ep); err != nil {
			t.Fatal(err)
		}
	}
	got, err := List(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, []Endpoint{b, a}) {
		t.Fatalf("list = %+v", got)
	}
	// Overwrite replaces.
	a.IPs = []string{"10.244.1.9/24"}
	if err := Write(dir, a); err != nil {
		t.Fatal(err)
	}
	got, _ = List(dir)
	if got[1].IPs[0] != "10.244.1.9/24" {
		t.Fatalf("overwrite lost: %+v", got)
	}
	ents, _ := os.ReadDir(dir)
	if len(ents) != 2 {
		t.Fatalf("temp files left behind: %v", ents)
	}
	if err := Remove(dir, "wva"); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir, "wva"); err != nil {
		t.Fatalf("second remove must succeed: %v", err)
	}
	got, _ = List(dir)
	if len(got) != 1 || got[0].HostVeth != "wvb" {
		t.Fatalf("after remove: %+v", got)
	}
}

func TestListSkipsBadAndTemp(t *testing.T) {
	dir := t.TempDir()
	if err := Write(dir, sample("wv1")); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, ".tmp-wv2-123"), []byte("{"), 0o644)
	os.WriteFile(filepath.Join(dir, "wv3.json"), []byte("{not json"), 0o644)
	os.WriteFile(filepath.Join(dir, "wv4.json"), []byte(`{"hostVeth":"other","podNamespace":"x","podName":"p"}`), 0o644)
	got, err := List(dir)
	if err == nil {
		t.Fatal("expected an error for the broken records")
	}
	if len(got) != 1 || got[0].HostVeth != "wv1" {
		t.Fatalf("got %+v", got)
	}
}

func TestValidate(t *testing.T) {
	bad := []Endpoint{
		{HostVeth: "", PodNamespace: "x", PodName: "a"},
		{HostVeth: "../etc", PodNamespace: "x", PodName: "a"},
		{HostVeth: "averyveryverylongname", PodNamespace: "x", PodName: "a"},
		{HostVeth: "wv1", PodName: "a"},
		{HostVeth: "wv1", PodNamespace: "x", PodName: "a", IPs: []string{"nope"}},
	}
	for _, ep := range bad {
		if err := Write(t.TempDir(), ep); err == nil {
			t.Errorf("Write(%+v) accepted", ep)
		}
	}
	ep := sample("wv1")
	ep.IPs = []string{"10.0.0.1", "10.0.0.2/24"}
	addrs, err := ep.Addrs()
	if err != nil || len(addrs) != 2 || addrs[0].String() != "10.0.0.1" || addrs[1].String() != "10.0.0.2" {
		t.Fatalf("addrs %v %v", addrs, err)
	}
}
