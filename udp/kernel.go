package udp

import (
	"fmt"
	"net/netip"
	"sync"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/tun"
)

// Kernel is what the backend needs of the node besides the route writer
// and the guard: the TUN device, its address, and sockets. Netlink is the
// real one (Linux), FakeKernel the in-memory one.
type Kernel interface {
	// OpenDevice creates or adopts the persistent TUN name, with mtu, up.
	OpenDevice(name string, mtu int) (tun.Device, error)
	// SetAddr makes p the only IPv4 address of name and returns the
	// device's ifindex.
	SetAddr(name string, p netip.Prefix) (int, error)
	// DeviceIndex returns name's ifindex, 0 when there is no such device.
	DeviceIndex(name string) (int, error)
	// RemoveDevice deletes name; a missing device is success.
	RemoveDevice(name string) error
	// LinkMTU returns the MTU of the underlay link.
	LinkMTU(name string) (int, error)
	// NewBind returns a UDP socket, not yet open.
	NewBind() conn.Bind
}

// FakeKernel is an in-memory Kernel over a FakeNet, for one node whose
// underlay address is Addr. Every OpenDevice returns a new tun.Fake.
type FakeKernel struct {
	Net  *FakeNet
	Addr netip.Addr
	MTU  int // the underlay's

	mu     sync.Mutex
	dev    *tun.Fake
	index  int // 0: no device
	next   int
	addrs  []netip.Prefix
	opens  int
	binds  []*FakeBind
	openFn func() error
}

// NewFakeKernel returns a node with underlay address addr on n.
func NewFakeKernel(n *FakeNet, addr netip.Addr) *FakeKernel {
	return &FakeKernel{Net: n, Addr: addr, MTU: 1500, next: 10}
}

var _ Kernel = (*FakeKernel)(nil)

// OpenDevice implements Kernel.
func (k *FakeKernel) OpenDevice(name string, mtu int) (tun.Device, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.openFn != nil {
		if err := k.openFn(); err != nil {
			return nil, err
		}
	}
	if k.index == 0 {
		k.next++
		k.index, k.addrs = k.next, nil
	}
	k.opens++
	k.dev = tun.NewFake(name, mtu, 64)
	return k.dev, nil
}

// FailOpens makes OpenDevice return err (nil: succeed again).
func (k *FakeKernel) FailOpens(err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.openFn = func() error { return err }
	if err == nil {
		k.openFn = nil
	}
}

// SetAddr implements Kernel.
func (k *FakeKernel) SetAddr(name string, p netip.Prefix) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.index == 0 {
		return 0, fmt.Errorf("link %s not found", name)
	}
	k.addrs = []netip.Prefix{p}
	return k.index, nil
}

// DeviceIndex implements Kernel.
func (k *FakeKernel) DeviceIndex(string) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.index, nil
}

// RemoveDevice implements Kernel; like the kernel, it cuts the open
// device off (its reads and writes fail).
func (k *FakeKernel) RemoveDevice(string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.index, k.addrs = 0, nil
	if k.dev != nil {
		_ = k.dev.Close()
	}
	return nil
}

// LinkMTU implements Kernel.
func (k *FakeKernel) LinkMTU(string) (int, error) { return k.MTU, nil }

// NewBind implements Kernel.
func (k *FakeKernel) NewBind() conn.Bind {
	b := k.Net.Bind(k.Addr)
	k.mu.Lock()
	k.binds = append(k.binds, b)
	k.mu.Unlock()
	return b
}

// Device returns the device opened last (nil before any open).
func (k *FakeKernel) Device() *tun.Fake {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dev
}

// State reports whether the device exists, its addresses and how many
// times it was opened.
func (k *FakeKernel) State() (exists bool, addrs []netip.Prefix, opens int) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.index != 0, append([]netip.Prefix(nil), k.addrs...), k.opens
}
