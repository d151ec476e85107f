package udp

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/uencap"
)

// Peer is a remote node as the relay needs it.
type Peer = uencap.Peer

// Table is the relay's routing state: which node owns a pod address (for
// sending) and which pod CIDRs a sender may speak for (for receiving). It
// is immutable once built; the relay swaps whole tables.
type Table struct {
	local    []netip.Prefix
	peers    []tablePeer
	bySender map[netip.Addr]int
	byPrefix map[netip.Prefix]int
	// bits4, bits6: the distinct peer prefix lengths, longest first.
	bits4, bits6 []int
}

type tablePeer struct {
	name  string
	dst   netip.AddrPort
	ep    conn.Endpoint
	cidrs []netip.Prefix
}

type ownedPrefix struct {
	p    netip.Prefix
	peer int
}

// NewTable builds the table for this node's pod CIDRs (local) and its
// peers, sending to port. What cannot be used is left out and reported:
// a peer without a valid underlay address or sharing one with another,
// and a pod CIDR that overlaps this node's or an earlier peer's.
func NewTable(local []netip.Prefix, peers []Peer, port uint16) (*Table, []string) {
	t := &Table{bySender: map[netip.Addr]int{}, byPrefix: map[netip.Prefix]int{}}
	for _, p := range local {
		t.local = append(t.local, p.Masked())
	}
	var problems []string
	var owned []ownedPrefix
	sorted := slices.SortedFunc(slices.Values(peers), func(a, b Peer) int { return cmp.Compare(a.Name, b.Name) })
	for _, p := range sorted {
		ip := p.UnderlayIP.Unmap()
		if !ip.IsValid() || ip.IsUnspecified() {
			problems = append(problems, fmt.Sprintf("peer %s: no underlay address", p.Name))
			continue
		}
		if other, dup := t.bySender[ip]; dup {
			problems = append(problems, fmt.Sprintf("peer %s: underlay address %s is also %s's", p.Name, ip, t.peers[other].name))
			continue
		}
		i := len(t.peers)
		t.bySender[ip] = i
		t.peers = append(t.peers, tablePeer{name: p.Name, dst: netip.AddrPortFrom(ip, port)})
		for _, c := range p.PodCIDRs {
			c = c.Masked()
			if slices.ContainsFunc(t.local, c.Overlaps) {
				problems = append(problems, fmt.Sprintf("peer %s: pod CIDR %s overlaps this node's", p.Name, c))
				continue
			}
			owned = append(owned, ownedPrefix{c, i})
		}
	}
	problems = append(problems, t.index(owned)...)
	return t, problems
}

// index fills byPrefix and the peers' CIDRs from owned, keeping only
// prefixes that overlap no other: sorted by address, a prefix overlaps an
// earlier kept one exactly when the last kept one contains its address.
func (t *Table) index(owned []ownedPrefix) []string {
	slices.SortFunc(owned, func(a, b ownedPrefix) int {
		if c := a.p.Addr().Compare(b.p.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.p.Bits(), b.p.Bits())
	})
	var problems []string
	last := -1
	for i, o := range owned {
		if last >= 0 && owned[last].p.Contains(o.p.Addr()) {
			problems = append(problems, fmt.Sprintf("peer %s: pod CIDR %s overlaps %s of %s, left out",
				t.peers[o.peer].name, o.p, owned[last].p, t.peers[owned[last].peer].name))
			continue
		}
		last = i
		t.byPrefix[o.p] = o.peer
		t.peers[o.peer].cidrs = append(t.peers[o.peer].cidrs, o.p)
		if o.p.Addr().Is4() {
			t.bits4 = append(t.bits4, o.p.Bits())
		} else {
			t.bits6 = append(t.bits6, o.p.Bits())
		}
	}
	for _, b := range []*[]int{&t.bits4, &t.bits6} {
		slices.Sort(*b)
		*b = slices.Compact(*b)
		slices.Reverse(*b)
	}
	return problems
}

// Peers is the number of peers in the table.
func (t *Table) Peers() int { return len(t.peers) }

// lookup returns the peer owning dst (longest prefix), or -1.
func (t *Table) lookup(dst netip.Addr) int {
	bits := t.bits4
	if dst.Is6() {
		bits = t.bits6
	}
	for _, b := range bits {
		if i, ok := t.byPrefix[netip.PrefixFrom(dst, b).Masked()]; ok {
			return i
		}
	}
	return -1
}

// innerDst returns the destination of the IPv4/IPv6 packet pkt.
func innerDst(pkt []byte) (netip.Addr, bool) {
	switch {
	case len(pkt) >= 20 && pkt[0]>>4 == 4:
		return netip.AddrFrom4([4]byte(pkt[16:20])), true
	case len(pkt) >= 40 && pkt[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(pkt[24:40])), true
	}
	return netip.Addr{}, false
}

// parse checks that pkt is a whole IPv4 or IPv6 packet and returns its
// length as its header declares (a datagram may carry trailing bytes,
// which are cut), its source and destination.
func parse(pkt []byte) (n int, src, dst netip.Addr, r Reason) {
	if len(pkt) == 0 {
		return 0, src, dst, DropTruncated
	}
	switch pkt[0] >> 4 {
	case 4:
		if len(pkt) < 20 {
			return 0, src, dst, DropTruncated
		}
		ihl, total := int(pkt[0]&0x0f)*4, int(binary.BigEndian.Uint16(pkt[2:4]))
		if ihl < 20 || total < ihl {
			return 0, src, dst, DropNotIP
		}
		if total > len(pkt) {
			return 0, src, dst, DropTruncated
		}
		return total, netip.AddrFrom4([4]byte(pkt[12:16])), netip.AddrFrom4([4]byte(pkt[16:20])), OK
	case 6:
		if len(pkt) < 40 {
			return 0, src, dst, DropTruncated
		}
		total := 40 + int(binary.BigEndian.Uint16(pkt[4:6]))
		if total > len(pkt) {
			return 0, src, dst, DropTruncated
		}
		return total, netip.AddrFrom16([16]byte(pkt[8:24])), netip.AddrFrom16([16]byte(pkt[24:40])), OK
	}
	return 0, src, dst, DropNotIP
}

// Check validates the payload pkt of a datagram from the underlay address
// from, for a TUN of the given MTU: the sender must be a known node, pkt a
// whole IPv4/IPv6 packet no larger than mtu, its source inside the
// sender's pod CIDRs and its destination inside this node's. It returns
// the length to write into the TUN, or why the datagram is dropped. It
// reads only inside pkt and never allocates.
func (t *Table) Check(from netip.Addr, pkt []byte, mtu int) (int, Reason) {
	i, ok := t.bySender[from.Unmap()]
	if !ok {
		return 0, DropUnknownSender
	}
	n, src, dst, r := parse(pkt)
	if r != OK {
		return 0, r
	}
	if n > mtu {
		return 0, DropOversize
	}
	if !containsAddr(t.peers[i].cidrs, src) {
		return 0, DropSpoofedSource
	}
	if !containsAddr(t.local, dst) {
		return 0, DropForeignDestination
	}
	return n, OK
}

func containsAddr(ps []netip.Prefix, a netip.Addr) bool {
	for _, p := range ps {
		if p.Contains(a) {
			return true
		}
	}
	return false
}
