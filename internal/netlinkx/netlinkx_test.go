package netlinkx

import (
	"errors"
	"fmt"
	"net"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/testutil"
)

func TestRetry(t *testing.T) {
	calls := 0
	v, err := retry(func() (int, error) {
		calls++
		if calls < 3 {
			return 0, fmt.Errorf("dump: %w", netlink.ErrDumpInterrupted)
		}
		return 7, nil
	})
	if v != 7 || err != nil || calls != 3 {
		t.Fatalf("got %d, %v after %d calls", v, err, calls)
	}
	calls = 0
	err = Do(func() error { calls++; return unix.EINTR })
	if !errors.Is(err, unix.EINTR) || calls != maxAttempts {
		t.Fatalf("EINTR forever: %v after %d calls", err, calls)
	}
	calls = 0
	err = Do(func() error { calls++; return unix.EPERM })
	if !errors.Is(err, unix.EPERM) || calls != 1 {
		t.Fatalf("EPERM retried: %v after %d calls", err, calls)
	}
}

// CreateVeth makes the pair in one request: host end up and on the
// bridge, peer inside the other netns; DelLinkByName removes both ends.
func TestCreateAndDeleteVeth(t *testing.T) {
	node, pod := testutil.NewNS(t), testutil.NewNS(t)
	err := node.Do(func(ns.NetNS) error {
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br-x", TxQLen: -1}}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		brl, err := netlink.LinkByName("br-x")
		if err != nil {
			return err
		}
		mac := []byte{0x02, 1, 2, 3, 4, 5}
		spec := VethSpec{Name: "host-x", MAC: mac, MasterIndex: brl.Attrs().Index, MTU: 1400,
			PeerName: "eth0", PeerMAC: []byte{0x02, 9, 9, 9, 9, 9}, PeerNSFd: int(pod.Fd())}
		if err := CreateVeth(spec); err != nil {
			return err
		}
		if err := CreateVeth(spec); !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("second create: %v, want EEXIST", err)
		}
		h, err := netlink.LinkByName("host-x")
		if err != nil {
			return err
		}
		a := h.Attrs()
		if a.MasterIndex != brl.Attrs().Index || a.MTU != 1400 || a.HardwareAddr.String() != "02:01:02:03:04:05" || a.Flags&net.FlagUp == 0 {
			return fmt.Errorf("host end: master %d mtu %d mac %s flags %v", a.MasterIndex, a.MTU, a.HardwareAddr, a.Flags)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = pod.Do(func(ns.NetNS) error {
		p, err := netlink.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("peer not in pod netns: %w", err)
		}
		if p.Attrs().MTU != 1400 || p.Attrs().HardwareAddr.String() != "02:09:09:09:09:09" {
			return fmt.Errorf("peer mtu %d mac %s", p.Attrs().MTU, p.Attrs().HardwareAddr)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = node.Do(func(ns.NetNS) error {
		if err := DelLinkByName("host-x"); err != nil {
			return err
		}
		if err := DelLinkByName("host-x"); !IsNotFound(err) {
			return fmt.Errorf("second delete: %v, want not found", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = pod.Do(func(ns.NetNS) error {
		if _, err := netlink.LinkByName("eth0"); !IsNotFound(err) {
			return fmt.Errorf("peer survived deleting the host end: %v", err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
