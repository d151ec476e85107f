// Package conntrack is a narrow shim over the connection tracking table of
// one network namespace (ctnetlink, through vishvananda/netlink), with a
// fake for rootless tests. Weft deletes entries in two places: the policy
// controller removes the flows a changed policy now denies (conntrack's
// RELATED,ESTABLISHED accept would otherwise keep them alive), and the CNI
// DEL removes every entry of a pod address before the address is released,
// so a reused address never inherits an old pod's connections.
package conntrack

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Family is an address family of the table.
type Family uint8

// The families conntrack tracks for Weft.
const (
	IPv4 Family = unix.AF_INET
	IPv6 Family = unix.AF_INET6
)

// FamilyOf returns the table family an address belongs to.
func FamilyOf(a netip.Addr) Family {
	if a.Unmap().Is4() {
		return IPv4
	}
	return IPv6
}

// Tuple is one direction of a tracked flow.
type Tuple struct {
	Src, Dst     netip.Addr
	SPort, DPort uint16 // zero for protocols without ports (ICMP)
}

// Flow is one conntrack entry: the original direction (as the first packet
// arrived) and the reply direction (as replies are expected, i.e. with NAT
// applied).
type Flow struct {
	Proto uint8 // IANA protocol number: 6 tcp, 17 udp, 132 sctp, 1 icmp
	Orig  Tuple
	Reply Tuple
}

// Forwarded returns the original direction as the filter table's FORWARD
// hook sees it: DNAT (PREROUTING) already applied, SNAT (POSTROUTING) not
// yet. The destination and port are thus the reply's source; the source is
// the original one.
func (f Flow) Forwarded() (src, dst netip.Addr, dport uint16) {
	return f.Orig.Src, f.Reply.Src, f.Reply.SPort
}

// Touches reports whether a is an address of either direction of f.
func (f Flow) Touches(a netip.Addr) bool {
	return f.Orig.Src == a || f.Orig.Dst == a || f.Reply.Src == a || f.Reply.Dst == a
}

func (f Flow) String() string {
	return fmt.Sprintf("proto %d %s:%d -> %s:%d (reply %s:%d -> %s:%d)", f.Proto, f.Orig.Src, f.Orig.SPort,
		f.Orig.Dst, f.Orig.DPort, f.Reply.Src, f.Reply.SPort, f.Reply.Dst, f.Reply.DPort)
}

// Table is a network namespace's connection tracking table.
type Table interface {
	// DeleteFunc deletes every entry of family for which match returns
	// true, in one dump of the table, and reports how many it deleted.
	DeleteFunc(family Family, match func(Flow) bool) (int, error)
}

// DeleteAddrs deletes every entry that has one of addrs as source or
// destination of either direction (the reply side covers DNAT: a client
// of a Service whose backend was the address). It returns how many.
func DeleteAddrs(t Table, addrs []netip.Addr) (int, error) {
	byFam := map[Family][]netip.Addr{}
	for _, a := range addrs {
		a = a.Unmap()
		byFam[FamilyOf(a)] = append(byFam[FamilyOf(a)], a)
	}
	total := 0
	var errs []error
	for _, fam := range []Family{IPv4, IPv6} {
		as := byFam[fam]
		if len(as) == 0 {
			continue
		}
		n, err := t.DeleteFunc(fam, func(f Flow) bool {
			for _, a := range as {
				if f.Touches(a) {
					return true
				}
			}
			return false
		})
		total += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	return total, errors.Join(errs...)
}

// Kernel is the real table, bound to the network namespace it was opened
// in.
type Kernel struct {
	h *netlink.Handle
}

// Open returns the table of the calling thread's network namespace.
func Open() (*Kernel, error) {
	h, err := netlink.NewHandle(unix.NETLINK_NETFILTER, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open netlink: %w", err)
	}
	return &Kernel{h: h}, nil
}

// OpenAt returns the table of the network namespace at path ("" = the
// calling thread's).
func OpenAt(path string) (*Kernel, error) {
	if path == "" {
		return Open()
	}
	nsh, err := netns.GetFromPath(path)
	if err != nil {
		return nil, fmt.Errorf("conntrack: netns %s: %w", path, err)
	}
	defer nsh.Close()
	h, err := netlink.NewHandleAt(nsh, unix.NETLINK_NETFILTER, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("conntrack: open netlink in %s: %w", path, err)
	}
	return &Kernel{h: h}, nil
}

// Close releases the sockets.
func (k *Kernel) Close() { k.h.Close() }

// maxAttempts bounds the passes over a table whose dump the kernel
// interrupted (entries changed meanwhile): each pass deletes what it saw.
const maxAttempts = 3

// DeleteFunc implements Table.
func (k *Kernel) DeleteFunc(family Family, match func(Flow) bool) (int, error) {
	filter := funcFilter(match)
	total := 0
	for range maxAttempts {
		n, err := k.h.ConntrackDeleteFilters(netlink.ConntrackTable, netlink.InetFamily(family), filter)
		total += int(n)
		if err == nil || !errors.Is(err, netlink.ErrDumpInterrupted) {
			if err != nil {
				err = fmt.Errorf("conntrack: delete: %w", err)
			}
			return total, err
		}
	}
	return total, fmt.Errorf("conntrack: delete: dump interrupted %d times", maxAttempts)
}

// List dumps the table of family.
func (k *Kernel) List(family Family) ([]Flow, error) {
	var raw []*netlink.ConntrackFlow
	var err error
	for range maxAttempts {
		raw, err = k.h.ConntrackTableList(netlink.ConntrackTable, netlink.InetFamily(family))
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack: list: %w", err)
	}
	out := make([]Flow, 0, len(raw))
	for _, f := range raw {
		out = append(out, fromNetlink(f))
	}
	return out, nil
}

// LocalAddrs returns the namespace's own addresses. Flows from or to them
// are the host's own (INPUT/OUTPUT), never forwarded.
func (k *Kernel) LocalAddrs() ([]netip.Addr, error) {
	var as []netlink.Addr
	var err error
	for range maxAttempts {
		as, err = k.h.AddrList(nil, netlink.FAMILY_ALL)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("conntrack: local addresses: %w", err)
	}
	out := make([]netip.Addr, 0, len(as))
	for _, a := range as {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// funcFilter adapts a match function to the library's filter interface.
type funcFilter func(Flow) bool

func (f funcFilter) MatchConntrackFlow(fl *netlink.ConntrackFlow) bool { return f(fromNetlink(fl)) }

func fromNetlink(f *netlink.ConntrackFlow) Flow {
	return Flow{Proto: f.Forward.Protocol, Orig: tuple(f.Forward), Reply: tuple(f.Reverse)}
}

func tuple(t netlink.IPTuple) Tuple {
	return Tuple{Src: addr(t.SrcIP), Dst: addr(t.DstIP), SPort: t.SrcPort, DPort: t.DstPort}
}

func addr(ip net.IP) netip.Addr {
	a, _ := netip.AddrFromSlice(ip)
	return a.Unmap()
}
