// Package netlinkx is a narrow shim over vishvananda/netlink: it retries
// dumps the kernel interrupted (NLM_F_DUMP_INTR, seen while links or
// addresses change concurrently) and calls interrupted by EINTR, and adds
// the few single-round-trip requests the plugins need that the library only
// offers as two (delete a link by name).
package netlinkx

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// maxAttempts bounds the retries of an interrupted request.
const maxAttempts = 5

// retry runs fn again while the kernel reports an interrupted dump or the
// call returns EINTR.
func retry[T any](fn func() (T, error)) (T, error) {
	var (
		v   T
		err error
	)
	for range maxAttempts {
		v, err = fn()
		if err == nil {
			return v, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) && !errors.Is(err, unix.EINTR) {
			return v, err
		}
	}
	return v, err
}

// Handle wraps a netlink handle bound to one network namespace (the one
// the socket was created in).
type Handle struct {
	h *netlink.Handle
}

// NewHandle opens a netlink route socket in the calling thread's current
// network namespace. Create it inside ns.Do to bind it to another namespace;
// the socket keeps that binding after ns.Do returns.
func NewHandle() (*Handle, error) {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	return &Handle{h: h}, nil
}

// NewHandleAt opens a netlink route socket in the network namespace at
// path (e.g. /var/run/netns/NAME or /proc/PID/ns/net), so no OS thread has
// to switch namespaces.
func NewHandleAt(path string) (*Handle, error) {
	h, err := OpenAt(path, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	return &Handle{h: h}, nil
}

// OpenAt opens a raw netlink handle of protocol (unix.NETLINK_*) bound to
// the network namespace at path ("" = the calling thread's current one).
func OpenAt(path string, protocol int) (*netlink.Handle, error) {
	if path == "" {
		h, err := netlink.NewHandle(protocol)
		if err != nil {
			return nil, fmt.Errorf("open netlink socket: %w", err)
		}
		return h, nil
	}
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", path, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, protocol)
	if err != nil {
		return nil, fmt.Errorf("open netlink socket in %s: %w", path, err)
	}
	return h, nil
}

// Current returns a handle that sends each request from the calling
// thread's network namespace at the time (the library's package-level
// behaviour). It holds no socket; Close is a no-op.
func Current() *Handle { return &Handle{h: &netlink.Handle{}} }

// Close releases the socket.
func (x *Handle) Close() { x.h.Close() }

// Raw exposes the underlying handle for requests that need no retry.
func (x *Handle) Raw() *netlink.Handle { return x.h }

// LinkByName looks a link up by name.
func (x *Handle) LinkByName(name string) (netlink.Link, error) {
	return retry(func() (netlink.Link, error) { return x.h.LinkByName(name) })
}

// LinkList dumps all links.
func (x *Handle) LinkList() ([]netlink.Link, error) {
	return retry(x.h.LinkList)
}

// AddrList dumps the addresses of link (nil: all links) of a family.
func (x *Handle) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	return retry(func() ([]netlink.Addr, error) { return x.h.AddrList(link, family) })
}

// RouteList dumps the routes of link (nil: all) of a family.
func (x *Handle) RouteList(link netlink.Link, family int) ([]netlink.Route, error) {
	return retry(func() ([]netlink.Route, error) { return x.h.RouteList(link, family) })
}

// LinkByIndex looks a link up by index.
func (x *Handle) LinkByIndex(index int) (netlink.Link, error) {
	return retry(func() (netlink.Link, error) { return x.h.LinkByIndex(index) })
}

// RouteListFiltered dumps the routes of a family that match filter on the
// fields filterMask names (netlink.RT_FILTER_*).
func (x *Handle) RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error) {
	return retry(func() ([]netlink.Route, error) { return x.h.RouteListFiltered(family, filter, filterMask) })
}

// NeighList dumps the neighbour (or, with AF_BRIDGE, FDB) entries of the
// link with index (0: all) of a family.
func (x *Handle) NeighList(index, family int) ([]netlink.Neigh, error) {
	return retry(func() ([]netlink.Neigh, error) { return x.h.NeighList(index, family) })
}

// Do runs a request that returns only an error, retrying on EINTR.
func Do(fn func() error) error {
	_, err := retry(func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// IsNotFound reports whether err means "no such link".
func IsNotFound(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV)
}

// DelLinkByName deletes the link called name in the calling thread's
// network namespace in one round trip (the library looks the index up
// first). A missing link returns an error for which IsNotFound is true.
func DelLinkByName(name string) error {
	return Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}

// SetDownByName clears IFF_UP of the link called name in the calling
// thread's network namespace in one round trip. When it returns the link
// passes no more packets (dev_close waits for those in flight). A missing
// link returns an error for which IsNotFound is true.
func SetDownByName(name string) error {
	return Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
		msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
		msg.Change = unix.IFF_UP
		msg.Flags = 0
		req.AddData(msg)
		req.AddData(nl.NewRtAttr(unix.IFLA_IFNAME, nl.ZeroTerminated(name)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}
