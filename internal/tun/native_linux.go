package tun

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	wgtun "golang.zx2c4.com/wireguard/tun"

	"github.com/weftnet/weft/internal/netlinkx"
)

// virtioNetHdrLen is the size of struct virtio_net_hdr, the header in front
// of every packet on a TUN opened with IFF_VNET_HDR (kernel ABI).
const virtioNetHdrLen = VirtioNetHdrLen

const (
	tcpOffloads = unix.TUN_F_CSUM | unix.TUN_F_TSO4 | unix.TUN_F_TSO6
	udpOffloads = unix.TUN_F_USO4 | unix.TUN_F_USO6
)

// Options say which device to open and where.
type Options struct {
	// Name of the device (weft.udp).
	Name string
	// MTU set on the device at every open (adopting included).
	MTU int
	// NetNS is the path of the network namespace holding the device, ""
	// for the caller's own.
	NetNS string
	Log   *slog.Logger
	// NoOffload opens the device without IFF_VNET_HDR (one packet per
	// read and write): for comparison and as an operator's escape hatch.
	NoOffload bool
}

// Native is a kernel TUN device opened through wireguard-go's tun package.
type Native struct {
	wg      wgtun.Device
	raw     io.Writer // the device file: plain writes after a GRO failure
	name    string
	mtu     int
	adopted bool
	log     *slog.Logger

	gro      atomic.Bool
	mu       sync.Mutex // guards mode
	mode     Mode
	fallOnce sync.Once
}

var _ Device = (*Native)(nil)

// inNS runs fn in the namespace at path ("" = the current one), on a
// locked OS thread.
func inNS(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	return ns.WithNetNSPath(path, func(ns.NetNS) error { return fn() })
}

// Open creates the persistent TUN device o.Name, or attaches to the one
// that exists (Adopted reports which), sets its MTU and brings it up. It
// enables TSO (and USO where the kernel has it); when the kernel refuses
// the offloads it opens the device without them and says so in Mode.
func Open(o Options) (*Native, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	d := &Native{name: o.Name, mtu: o.MTU, log: o.Log}
	var fd int
	err := inNS(o.NetNS, func() error {
		var err error
		if d.adopted, err = existing(o.Name); err != nil {
			return err
		}
		fd, err = attach(o.Name, !o.NoOffload)
		return err
	})
	if err != nil {
		return nil, err
	}
	wg, _, err := wgtun.CreateUnmonitoredTUNFromFD(fd)
	if err != nil && !o.NoOffload {
		// The kernel took IFF_VNET_HDR but refused TUNSETOFFLOAD: reopen plain.
		_ = unix.Close(fd)
		d.mode.Fallback = fmt.Sprintf("offloads refused: %v", err)
		o.Log.Warn("TUN offloads refused, running without", "device", o.Name, "err", err)
		if err = inNS(o.NetNS, func() error { fd, err = attach(o.Name, false); return err }); err != nil {
			return nil, err
		}
		wg, _, err = wgtun.CreateUnmonitoredTUNFromFD(fd)
	}
	if err != nil {
		_ = unix.Close(fd)
		return nil, fmt.Errorf("tun %s: %w", o.Name, err)
	}
	d.wg, d.raw = wg, wg.File()
	d.probeMode()
	if err := inNS(o.NetNS, func() error { return linkUp(o.Name, o.MTU) }); err != nil {
		_ = wg.Close()
		return nil, err
	}
	return d, nil
}

// existing reports whether name exists, and fails when it is not a TUN.
func existing(name string) (bool, error) {
	h, err := netlinkx.NewHandle()
	if err != nil {
		return false, err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if netlinkx.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("look up %s: %w", name, err)
	}
	if t, ok := l.(*netlink.Tuntap); !ok || t.Mode != netlink.TUNTAP_MODE_TUN {
		return false, fmt.Errorf("link %s exists and is a %s, not a TUN device", name, l.Type())
	}
	return true, nil
}

// attach opens /dev/net/tun and attaches to (creating if needed) the
// single-queue TUN device name, marked persistent so it outlives the fd.
func attach(name string, vnetHdr bool) (int, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("open /dev/net/tun: %w", err)
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("tun name %q: %w", name, err)
	}
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI)
	if vnetHdr {
		flags |= unix.IFF_VNET_HDR
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		_ = unix.Close(fd)
		if errors.Is(err, unix.EBUSY) {
			return -1, fmt.Errorf("attach to tun %s: %w (another process holds it)", name, err)
		}
		return -1, fmt.Errorf("attach to tun %s: %w", name, err)
	}
	if err := unix.IoctlSetInt(fd, unix.TUNSETPERSIST, 1); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("make tun %s persistent: %w", name, err)
	}
	return fd, nil
}

func linkUp(name string, mtu int) error {
	h, err := netlinkx.NewHandle()
	if err != nil {
		return err
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("look up %s: %w", name, err)
	}
	if mtu > 0 && l.Attrs().MTU != mtu {
		if err := h.Raw().LinkSetMTU(l, mtu); err != nil {
			return fmt.Errorf("set %s mtu %d: %w", name, mtu, err)
		}
	}
	if err := h.Raw().LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	return nil
}

// probeMode reads back which offloads the device has. wireguard-go set
// TSO when the device has IFF_VNET_HDR and tried TSO+USO; repeating the
// TSO+USO request is harmless (it sets the same flags, and a refusal
// changes nothing), and tells whether USO is on.
func (d *Native) probeMode() {
	sc, err := d.wg.File().SyscallConn()
	if err != nil {
		return
	}
	_ = sc.Control(func(fd uintptr) {
		ifr, err := unix.NewIfreq(d.name)
		if err != nil || unix.IoctlIfreq(int(fd), unix.TUNGETIFF, ifr) != nil {
			return
		}
		d.mode.VnetHdr = ifr.Uint16()&unix.IFF_VNET_HDR != 0
		if !d.mode.VnetHdr {
			return
		}
		d.mode.TSO, d.mode.GROWrite = true, true
		d.mode.USO = unix.IoctlSetInt(int(fd), unix.TUNSETOFFLOAD, tcpOffloads|udpOffloads) == nil
	})
	d.gro.Store(d.mode.GROWrite)
}

// Adopted reports whether the device existed before Open.
func (d *Native) Adopted() bool { return d.adopted }

// Read implements Device.
func (d *Native) Read(bufs [][]byte, sizes []int) (int, error) {
	return d.wg.Read(bufs, sizes, Offset)
}

// Write implements Device. A batch of one packet is written plainly
// (coalescing has nothing to do, and its flow tables cost a 1-byte
// request/response more than the write itself). A coalescing write the kernel rejects with
// EINVAL turns coalescing off for good; that batch is lost (its buffers
// were merged in place), the error says so, and later writes go out one
// packet per write.
func (d *Native) Write(bufs [][]byte) (int, error) {
	if len(bufs) == 0 {
		return 0, nil
	}
	if !d.gro.Load() || len(bufs) == 1 { // one packet: nothing to coalesce
		return d.writePlain(bufs)
	}
	if _, err := d.wg.Write(bufs, Offset); err != nil {
		if errors.Is(err, unix.EINVAL) {
			d.disableGRO(err)
			return 0, fmt.Errorf("tun %s: coalesced write rejected, GRO off from now on: %w", d.name, err)
		}
		return 0, fmt.Errorf("tun %s write: %w", d.name, err)
	}
	return len(bufs), nil
}

func (d *Native) disableGRO(cause error) {
	d.fallOnce.Do(func() {
		d.gro.Store(false)
		d.mu.Lock()
		d.mode.GROWrite = false
		d.mode.Fallback = fmt.Sprintf("GRO write failed: %v", cause)
		d.mu.Unlock()
		d.log.Warn("TUN rejected a coalesced (GRO) write; writing packets one by one from now on",
			"device", d.name, "err", cause)
	})
}

// writePlain writes each packet on its own, behind an all-zero virtio-net
// header (no GSO, checksum complete) when the device has one.
func (d *Native) writePlain(bufs [][]byte) (int, error) {
	d.mu.Lock()
	vnet := d.mode.VnetHdr
	d.mu.Unlock()
	if !vnet {
		if _, err := d.wg.Write(bufs, Offset); err != nil {
			return 0, fmt.Errorf("tun %s write: %w", d.name, err)
		}
		return len(bufs), nil
	}
	var errs error
	n := 0
	for _, b := range bufs {
		h := b[Offset-virtioNetHdrLen:]
		clear(h[:virtioNetHdrLen])
		if _, err := d.raw.Write(h); err != nil {
			errs = errors.Join(errs, err)
			continue
		}
		n++
	}
	if errs != nil {
		return n, fmt.Errorf("tun %s write: %w", d.name, errs)
	}
	return n, nil
}

// WriteGSO implements GSOWriter.
func (d *Native) WriteGSO(b []byte, header func(h []byte)) (bool, error) {
	d.mu.Lock()
	vnet := d.mode.VnetHdr
	d.mu.Unlock()
	if !vnet {
		return false, nil
	}
	h := b[Offset-virtioNetHdrLen:]
	header(h[:virtioNetHdrLen])
	if _, err := d.raw.Write(h); err != nil {
		return true, fmt.Errorf("tun %s gso write: %w", d.name, err)
	}
	return true, nil
}

// BatchSize implements Device.
func (d *Native) BatchSize() int { return d.wg.BatchSize() }

// MTU implements Device: the MTU set at Open.
func (d *Native) MTU() int { return d.mtu }

// Name implements Device.
func (d *Native) Name() string { return d.name }

// Mode implements Device.
func (d *Native) Mode() Mode {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mode
}

// Close implements Device: the fd goes, the persistent device stays.
func (d *Native) Close() error { return d.wg.Close() }

// Remove deletes the device name in the namespace at netnsPath ("" = the
// current one); a device that is not there is success.
func Remove(name, netnsPath string) error {
	return inNS(netnsPath, func() error {
		if err := netlinkx.DelLinkByName(name); err != nil && !netlinkx.IsNotFound(err) {
			return fmt.Errorf("delete %s: %w", name, err)
		}
		return nil
	})
}
