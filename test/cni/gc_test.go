package cni

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/podnet"
	"github.com/weftnet/weft/internal/testutil"
)

// gc runs libcni's GCNetworkList in the node netns with args.
func (e *env) gc(l *libcni.NetworkConfigList, args *libcni.GCArgs) error {
	return e.node.Do(func(ns.NetNS) error { return e.cni.GCNetworkList(context.Background(), l, args) })
}

// recordingList is a 1.1.0 conflist whose weft records endpoints in dir.
func (e *env) recordingList(dir string) *libcni.NetworkConfigList {
	wc := e.weftConf("weft-ipam")
	wc["endpointDir"] = dir
	return e.confList("1.1.0", wc)
}

// libcni sends "cni.dev/valid-attachments": null when the runtime has no
// pod left (GCArgs with a nil list). That is an empty list, for every part
// of GC alike: addresses, veths and endpoint records all go.
func TestGCNullValidAttachments(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	l := e.recordingList(dir)
	for _, n := range []string{"n0", "n1", "n2"} {
		e.mustAdd(l, e.newPod(n))
	}
	e.clearCache()
	if err := e.gc(l, &libcni.GCArgs{ValidAttachments: nil}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	e.assertClean(dir)
}

// gcProbe writes an IPAM plugin "weft-ipam-gcprobe" that, on GC, records
// the weft host veths present when it runs, then runs weft-ipam.
func gcProbe(t *testing.T) (dir, record string) {
	dir = t.TempDir()
	record = filepath.Join(dir, "veths-at-ipam-gc")
	script := "#!/bin/sh\nif [ \"$CNI_COMMAND\" = GC ]; then ip -o link show type veth | grep -o '" +
		podnet.HostVethPrefix + "[0-9a-f]*' > " + record + "; fi\nexec " +
		filepath.Join(testutil.BinDir(t), "weft-ipam") + "\n"
	if err := os.WriteFile(filepath.Join(dir, "weft-ipam-gcprobe"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, record
}

// GC deletes the stale veths before it releases their addresses (DEL's
// order), so an address is never free while a veth still carries it.
func TestGCDeletesVethsBeforeAddresses(t *testing.T) {
	probeDir, record := gcProbe(t)
	e := newEnv(t, probeDir)
	l := e.confList("1.1.0", e.weftConf("weft-ipam-gcprobe"))
	keep, stale := e.newPod("keep"), e.newPod("stale")
	e.mustAdd(l, keep)
	e.mustAdd(l, stale)
	e.clearCache()
	valid := []types.GCAttachment{{ContainerID: keep.rt.ContainerID, IfName: "eth0"}}
	if err := e.gc(l, &libcni.GCArgs{ValidAttachments: valid}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	b, err := os.ReadFile(record)
	if err != nil {
		t.Fatalf("IPAM GC never ran: %v", err)
	}
	seen := strings.Fields(string(b))
	if slices.Contains(seen, podnet.HostVethName(stale.rt.ContainerID, "eth0")) {
		t.Fatalf("IPAM GC ran while the stale veth still existed (veths then: %v)", seen)
	}
	if !slices.Contains(seen, podnet.HostVethName(keep.rt.ContainerID, "eth0")) {
		t.Fatalf("probe saw %v, not even the kept veth: it proves nothing", seen)
	}
	if al := e.allocations(); len(al) != 1 || al[0].ContainerID != keep.rt.ContainerID {
		t.Fatalf("allocations after GC: %+v", al)
	}
}

// Two networks share the bridge weft0-style (same bridge, same endpoint
// directory, different names and subnets). GC of one with no valid
// attachment collects only its own veths, addresses and records; the other
// network's pod keeps all of them and its traffic.
func TestGCTwoNetworksShareBridge(t *testing.T) {
	e := newEnv(t)
	dir := t.TempDir()
	l1 := e.recordingList(dir)

	other := *e
	other.netName = "weft-other-" + randHex(6)
	other.subnet = "10.78.0.0/24"
	l2 := other.recordingList(dir)

	mine := e.newPod("mine")
	e.mustAdd(l1, mine)
	theirs, peer := e.newPod("theirs"), e.newPod("peer")
	r := other.mustAdd(l2, theirs)
	other.mustAdd(l2, peer)
	tcpEcho(t, theirs, podIP(t, r).String()+":7070")

	// Records from before weft named the network: the one of a live veth
	// (theirs, rewritten without network) stays, a dead one goes.
	eps, err := endpoint.List(dir)
	if err != nil || len(eps) != 3 {
		t.Fatalf("records: %+v %v", eps, err)
	}
	for _, ep := range eps {
		if ep.ContainerID == theirs.rt.ContainerID {
			ep.Network = ""
			if err := endpoint.Write(dir, ep); err != nil {
				t.Fatal(err)
			}
			ep.HostVeth, ep.ContainerID = "wv000000000dead", "dead"
			if err := endpoint.Write(dir, ep); err != nil {
				t.Fatal(err)
			}
		}
	}
	e.clearCache()
	if err := e.gc(l1, &libcni.GCArgs{ValidAttachments: []types.GCAttachment{}}); err != nil {
		t.Fatalf("GC of %s: %v", e.netName, err)
	}
	if al := e.allocations(); len(al) != 0 {
		t.Fatalf("%s allocations after its GC: %+v", e.netName, al)
	}
	if al := other.allocations(); len(al) != 2 {
		t.Fatalf("%s lost allocations to the other network's GC: %+v", other.netName, al)
	}
	want := []string{podnet.HostVethName(peer.rt.ContainerID, "eth0"), podnet.HostVethName(theirs.rt.ContainerID, "eth0")}
	slices.Sort(want)
	got := e.hostVeths()
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("veths after GC of %s: %v, want the other network's %v", e.netName, got, want)
	}
	eps, err = endpoint.List(dir)
	var kept []string
	for _, ep := range eps {
		kept = append(kept, ep.ContainerID+"/"+ep.Network)
	}
	slices.Sort(kept)
	wantKept := []string{peer.rt.ContainerID + "/" + other.netName, theirs.rt.ContainerID + "/"}
	slices.Sort(wantKept)
	if err != nil || !slices.Equal(kept, wantKept) {
		t.Fatalf("records after GC: %v %v, want the other network's two %v", kept, err, wantKept)
	}
	if reply, err := tcpDial(peer, podIP(t, r).String()+":7070", "hi"); err != nil || reply != "echo:hi" {
		t.Fatalf("other network's pod unreachable after GC: %q %v", reply, err)
	}
}
