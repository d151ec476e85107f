package vxlan

import (
	"net/netip"
)

// DeviceSpec is the wanted VXLAN device.
type DeviceSpec struct {
	Name    string
	VNI     int
	Port    int
	LocalIP netip.Addr
	// UnderlayLink is the link the device sends through.
	UnderlayLink string
	MTU          int
}

// Device is a VXLAN device as found or created.
type Device struct {
	Name  string
	Index int
	MAC   string
	MTU   int
	// Adopted is true when the device existed and matched the spec.
	Adopted bool
	// Up is whether the device was up when found or created.
	Up bool
}

// FDBEntry is one unicast forwarding entry: MAC behind underlay Dst.
type FDBEntry struct {
	MAC string
	Dst netip.Addr
}

// NeighEntry is one permanent neighbour entry.
type NeighEntry struct {
	IP  netip.Addr
	MAC string
}

// Kernel is the small slice of netlink the backend uses for its device and
// entries (its routes go through the node's route writer, internal/route).
// The real implementation works in one network namespace; Fake keeps state
// in memory for rootless tests.
type Kernel interface {
	// EnsureDevice adopts a matching device or (re)creates it and sets its
	// MTU. A device it creates stays down: it would decapsulate from
	// anyone until the encapsulation guard is in place, so the backend
	// brings it up (SetUp) after the guard. An adopted device keeps its
	// state (up, behind the guard the previous weftd left).
	EnsureDevice(spec DeviceSpec) (Device, error)
	// SetUp brings the device up and reports whether it was down.
	SetUp(dev Device) (bool, error)
	// DeleteDevice removes the device; a missing device is success.
	DeleteDevice(name string) error
	// UnderlayMTU returns the MTU of a link.
	LinkMTU(name string) (int, error)

	Addrs(dev Device) ([]netip.Prefix, error)
	AddAddr(dev Device, p netip.Prefix) error
	DelAddr(dev Device, p netip.Prefix) error

	FDB(dev Device) ([]FDBEntry, error)
	SetFDB(dev Device, e FDBEntry) error
	DelFDB(dev Device, e FDBEntry) error

	// Neighs lists the permanent IPv4 neighbour entries on the device.
	Neighs(dev Device) ([]NeighEntry, error)
	SetNeigh(dev Device, e NeighEntry) error
	DelNeigh(dev Device, e NeighEntry) error
}
