package ipip

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/weftnet/weft/internal/uencap"
)

// Peer is a remote node as the tunnel needs it.
type Peer = uencap.Peer

// route is one remote pod CIDR and the node (index into Table.nodes)
// that owns it.
type route struct {
	cidr netip.Prefix
	node int
}

type node struct {
	name     string
	underlay netip.Addr
	cidrs    []netip.Prefix
}

// Table maps pod CIDRs to owning nodes (sending) and underlay addresses to
// the pod CIDRs they may speak for (receiving). IPv4 only (IP-in-IP
// carries IPv4 in IPv4). Immutable once built.
type Table struct {
	local  []netip.Prefix
	nodes  []node
	byAddr map[netip.Addr]int
	// routes are sorted longest prefix first, so the first match wins.
	routes []route
}

// NewTable builds the table for this node's pod CIDRs and its peers and
// returns what it left out and why: non-IPv4 entries, a peer without an
// underlay address or sharing one, a CIDR overlapping this node's or one
// taken by another peer.
func NewTable(local []netip.Prefix, peers []Peer) (*Table, []string) {
	t := &Table{byAddr: make(map[netip.Addr]int, len(peers))}
	var problems []string
	for _, p := range local {
		if !p.Addr().Is4() {
			problems = append(problems, fmt.Sprintf("local pod CIDR %s: not IPv4", p))
			continue
		}
		t.local = append(t.local, p.Masked())
	}
	peers = slices.Clone(peers)
	slices.SortFunc(peers, func(a, b Peer) int { return strings.Compare(a.Name, b.Name) })
	for _, p := range peers {
		addr := p.UnderlayIP.Unmap()
		if !addr.Is4() || addr.IsUnspecified() {
			problems = append(problems, fmt.Sprintf("peer %s: underlay address %v is no IPv4 address", p.Name, p.UnderlayIP))
			continue
		}
		if j, taken := t.byAddr[addr]; taken {
			problems = append(problems, fmt.Sprintf("peer %s: underlay address %s already belongs to %s", p.Name, addr, t.nodes[j].name))
			continue
		}
		t.byAddr[addr] = len(t.nodes)
		t.nodes = append(t.nodes, node{name: p.Name, underlay: addr})
		problems = append(problems, t.addCIDRs(len(t.nodes)-1, p.PodCIDRs)...)
	}
	slices.SortStableFunc(t.routes, func(a, b route) int { return b.cidr.Bits() - a.cidr.Bits() })
	return t, problems
}

// addCIDRs gives node i the CIDRs that clash with nothing already taken.
func (t *Table) addCIDRs(i int, cidrs []netip.Prefix) []string {
	var problems []string
	n := &t.nodes[i]
	for _, c := range cidrs {
		c = c.Masked()
		switch {
		case !c.Addr().Is4():
			problems = append(problems, fmt.Sprintf("peer %s: pod CIDR %s: not IPv4", n.name, c))
		case slices.ContainsFunc(t.local, c.Overlaps):
			problems = append(problems, fmt.Sprintf("peer %s: pod CIDR %s overlaps this node's", n.name, c))
		default:
			if k := slices.IndexFunc(t.routes, func(r route) bool { return r.cidr.Overlaps(c) }); k >= 0 {
				problems = append(problems, fmt.Sprintf("peer %s: pod CIDR %s overlaps %s of %s, left out",
					n.name, c, t.routes[k].cidr, t.nodes[t.routes[k].node].name))
				continue
			}
			t.routes = append(t.routes, route{cidr: c, node: i})
			n.cidrs = append(n.cidrs, c)
		}
	}
	return problems
}

// Peers is the number of usable peers.
func (t *Table) Peers() int { return len(t.nodes) }

// Next returns the underlay address of the node owning the destination of
// the IPv4 packet pkt; ok is false for no owner or no IPv4 packet.
func (t *Table) Next(pkt []byte) (netip.Addr, bool) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 {
		return netip.Addr{}, false
	}
	dst := netip.AddrFrom4([4]byte(pkt[16:20]))
	for _, r := range t.routes {
		if r.cidr.Contains(dst) {
			return t.nodes[r.node].underlay, true
		}
	}
	return netip.Addr{}, false
}

// Decap checks an IP-in-IP packet as the raw socket returns it (outer
// IPv4 header, then the inner packet) for a TUN of the given MTU. It
// returns where the inner packet starts and how long it is (as its header
// declares: trailing bytes are cut), or why the packet is dropped. It
// reads only inside pkt and never allocates.
func (t *Table) Decap(pkt []byte, mtu int) (off, n int, r Reason) {
	if len(pkt) < 20 || pkt[0]>>4 != 4 || pkt[0]&0x0f < 5 {
		return 0, 0, DropMalformed
	}
	if pkt[9] != Protocol {
		return 0, 0, DropMalformed
	}
	off = int(pkt[0]&0x0f) * 4
	if off > len(pkt) {
		return 0, 0, DropMalformed
	}
	sender, ok := t.byAddr[netip.AddrFrom4([4]byte(pkt[12:16]))]
	if !ok {
		return 0, 0, DropUnknownSender
	}
	n, r = checkInner(pkt[off:], mtu)
	if r != OK {
		return 0, 0, r
	}
	in := pkt[off:]
	if !inAny(t.nodes[sender].cidrs, netip.AddrFrom4([4]byte(in[12:16]))) {
		return 0, 0, DropSpoofedSource
	}
	if !inAny(t.local, netip.AddrFrom4([4]byte(in[16:20]))) {
		return 0, 0, DropForeignDestination
	}
	return off, n, OK
}

// checkInner checks that in starts with a whole IPv4 packet with a valid
// header checksum, no larger than mtu unless it is a TCP segment the
// receiving kernel's GRO merged (tcpSuper), and returns its length.
func checkInner(in []byte, mtu int) (int, Reason) {
	if len(in) < 20 {
		return 0, DropTruncated
	}
	hl, total := int(in[0]&0x0f)*4, int(binary.BigEndian.Uint16(in[2:4]))
	switch {
	case in[0]>>4 != 4 || hl < 20 || total < hl:
		return 0, DropNotIPv4
	case total > len(in) || hl > len(in):
		return 0, DropTruncated
	case total > mtu && !tcpSuper(in[:total], hl):
		return 0, DropOversize
	case headerSum(in[:hl]) != 0xffff:
		return 0, DropNotIPv4
	}
	return total, OK
}

// headerSum is the ones' complement sum of an IPv4 header (0xffff when
// its checksum is right).
func headerSum(h []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(h); i += 2 {
		s += uint32(h[i])<<8 | uint32(h[i+1])
	}
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

func inAny(ps []netip.Prefix, a netip.Addr) bool {
	return slices.ContainsFunc(ps, func(p netip.Prefix) bool { return p.Contains(a) })
}
