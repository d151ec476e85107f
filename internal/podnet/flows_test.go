package podnet

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/weftnet/weft/internal/endpoint"
)

// DEL finds the attachment's addresses in its endpoint record and in
// prevResult; a broken record does not hide prevResult's (nor fail DEL).
func TestAttachmentAddrs(t *testing.T) {
	dir := t.TempDir()
	veth := HostVethName("c1", "eth0")
	if err := endpoint.Write(dir, endpoint.Endpoint{ContainerID: "c1", IfName: "eth0", PodNamespace: "n", PodName: "p",
		HostVeth: veth, IPs: []string{"10.1.0.5/24", "fd00::5/64"}}); err != nil {
		t.Fatal(err)
	}
	conf, err := LoadConf([]byte(`{"cniVersion":"1.0.0","name":"n","type":"weft","endpointDir":"` + dir + `","ipam":{"type":"x"},
		"prevResult":{"cniVersion":"1.0.0","ips":[{"address":"10.1.0.5/24"},{"address":"10.1.0.6/24"}]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Addr{netip.MustParseAddr("10.1.0.5"), netip.MustParseAddr("fd00::5"), netip.MustParseAddr("10.1.0.6")}
	if got, err := attachmentAddrs(conf, veth); err != nil || !slices.Equal(got, want) {
		t.Errorf("attachmentAddrs = %v, %v; want %v", got, err, want)
	}
	if err := os.WriteFile(filepath.Join(dir, veth+".json"), []byte("{"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := attachmentAddrs(conf, veth)
	if err == nil || !slices.Equal(got, []netip.Addr{want[0], want[2]}) {
		t.Errorf("broken record: %v, %v; want prevResult's %v and an error", got, err, []netip.Addr{want[0], want[2]})
	}
}
