package shaping

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// leafRate is the TBF leaf's rate (bytes/s): far above any class's ceil,
// so it never holds a packet back (HTB would then see a leaf that is not
// work-conserving); the TBF is there to split GSO packets into frames
// before its FIFO, whose byte limit then means delay.
const leafRate = 125_000_000_000 // 1 Tbit/s

// Netlink is the real Kernel. NetNS, when set, is the path of the network
// namespace to work in (tests); otherwise the caller's.
type Netlink struct {
	NetNS      string
	VethPrefix string // host veths that may carry redirects ("wv")
	Log        *slog.Logger
	once       sync.Once
	leaf       string
	mu         sync.Mutex
	last       *Desired // what the last successful Apply wrote
	ifbs       [2]int   // the IFBs' indexes then
}

// Leaf probes once whether fq_codel exists and reports the leaf used.
func (k *Netlink) Leaf() string {
	k.once.Do(func() {
		k.leaf = LeafTBF
		if err := k.in(probeFQCodel); err == nil {
			k.leaf = LeafFQCodel
		}
		if k.Log != nil {
			k.Log.Info("bandwidth shaping leaf queue", "leaf", k.leaf)
		}
	})
	return k.leaf
}

func (k *Netlink) in(fn func() error) error {
	if k.NetNS == "" {
		return fn()
	}
	return ns.WithNetNSPath(k.NetNS, func(ns.NetNS) error { return fn() })
}

// probeFQCodel tries fq_codel on a throwaway IFB.
func probeFQCodel() error {
	const name = "weft.ifb.probe"
	_ = netlinkx.DelLinkByName(name)
	if err := netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: 1}}); err != nil {
		return err
	}
	defer func() { _ = netlinkx.DelLinkByName(name) }()
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	return netlink.QdiscReplace(netlink.NewFqCodel(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(1, 0)}))
}

// Apply converges d. A full Apply (the first, every resync, after any
// failure) reads the kernel back and repairs whatever differs; otherwise
// only what changed since the last Apply is written (one pod's ADD costs a
// handful of requests, not a dump of every pod's objects).
func (k *Netlink) Apply(ctx context.Context, d Desired, full bool) (int, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	last := k.last
	k.last = nil // until this Apply succeeds
	var n int
	var err error
	switch {
	case d.Off:
		n, err = k.remove()
	case full || last == nil:
		n, err = k.applyFull(d)
	default:
		n, err = k.applyDiff(*last, d)
	}
	if err == nil && !d.Off {
		k.last = &d
	}
	return n, err
}

// applyFull converges both trees, then the veth redirects, then removes
// the classes no pod needs any more (after their filters and redirects).
func (k *Netlink) applyFull(d Desired) (int, error) {
	leaf := k.Leaf()
	changes := 0
	err := k.in(func() error {
		var ifbs [2]netlink.Link
		var stale [2][]*netlink.HtbClass
		for _, t := range d.Trees {
			c := &converge{leaf: leaf}
			l, old, err := c.tree(t)
			changes += c.n
			if err != nil {
				return fmt.Errorf("%s tree: %w", t.Dir, err)
			}
			ifbs[t.Dir], stale[t.Dir] = l, old
			k.ifbs[t.Dir] = l.Attrs().Index
		}
		n, err := k.redirects(d.Redirects, ifbs)
		changes += n
		if err != nil {
			return err
		}
		for _, old := range stale {
			for _, cl := range old {
				if err := netlinkx.Do(func() error { return netlink.ClassDel(cl) }); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("delete class %s: %w", netlink.HandleStr(cl.Handle), err)
				}
				changes++
			}
		}
		return nil
	})
	return changes, err
}

// converge counts the changes one tree needed.
type converge struct {
	leaf    string
	segment uint32
	qdiscs  []netlink.Qdisc // the IFB's, read once per tree
	n       int
}

// tree brings one IFB, its root, classes, leaves and address filters in
// line; it returns the classes to delete once no redirect points at them.
func (c *converge) tree(t Tree) (netlink.Link, []*netlink.HtbClass, error) {
	c.segment = t.Segment
	l, err := c.ifb(t.Dir.Device())
	if err != nil {
		return nil, nil, err
	}
	if err := c.root(l, t); err != nil {
		return nil, nil, err
	}
	have, err := classes(l)
	if err != nil {
		return nil, nil, err
	}
	if c.qdiscs, err = netlink.QdiscList(l); err != nil {
		return nil, nil, fmt.Errorf("list qdiscs: %w", err)
	}
	want := map[uint32]bool{netlink.MakeHandle(rootMajor, rootClass): true}
	if err := c.class(l, have, netlink.MakeHandle(rootMajor, 0), netlink.MakeHandle(rootMajor, rootClass),
		t.Ceiling, t.Ceiling, DefaultMaxBurst, DefaultMaxBurst, maxQuantum); err != nil {
		return nil, nil, err
	}
	for _, cl := range t.Classes {
		h := netlink.MakeHandle(rootMajor, cl.Minor)
		want[h] = true
		if err := c.class(l, have, netlink.MakeHandle(rootMajor, rootClass), h, cl.Rate, cl.Ceil, cl.Burst, cl.Cburst, cl.Quantum); err != nil {
			return nil, nil, err
		}
		if err := c.leafQdisc(l, cl); err != nil {
			return nil, nil, err
		}
	}
	if err := c.addrFilters(l, t); err != nil {
		return nil, nil, err
	}
	var stale []*netlink.HtbClass
	for h, cl := range have {
		if !want[h] {
			stale = append(stale, cl)
		}
	}
	return l, stale, nil
}

// ifb creates the device or repairs its queue length and state.
func (c *converge) ifb(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if netlinkx.IsNotFound(err) {
		err = netlink.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: 1000}})
		if err == nil {
			c.n++
			l, err = netlink.LinkByName(name)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ifb %s: %w", name, err)
	}
	if _, ok := l.(*netlink.Ifb); !ok {
		return nil, fmt.Errorf("%s exists and is a %s, not an ifb", name, l.Type())
	}
	if l.Attrs().TxQLen == 0 {
		// A zero-length IFB queue drops (the reference plugin's HTB
		// regression): HTB's direct queue and requeues need room.
		if err := netlink.LinkSetTxQLen(l, 1000); err != nil {
			return nil, fmt.Errorf("ifb %s txqueuelen: %w", name, err)
		}
		c.n++
	}
	if l.Attrs().Flags&unix.IFF_UP == 0 {
		if err := netlink.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("ifb %s up: %w", name, err)
		}
		c.n++
	}
	return l, nil
}

// root keeps an HTB root 1: (unclassified packets go to the direct queue);
// anything else at the root is replaced.
func (c *converge) root(l netlink.Link, t Tree) error {
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if _, ok := q.(*netlink.Htb); ok && q.Attrs().Parent == netlink.HANDLE_ROOT && q.Attrs().Handle == netlink.MakeHandle(rootMajor, 0) {
			return nil // r2q only matters for classes without a quantum: every class has one
		}
	}
	h := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(rootMajor, 0)})
	h.Rate2Quantum = t.R2Q
	if err := netlink.QdiscReplace(h); err != nil {
		return fmt.Errorf("htb root on %s: %w", l.Attrs().Name, err)
	}
	c.n++
	return nil
}

func classes(l netlink.Link) (map[uint32]*netlink.HtbClass, error) {
	cs, err := netlink.ClassList(l, 0)
	if err != nil {
		return nil, fmt.Errorf("list classes of %s: %w", l.Attrs().Name, err)
	}
	out := map[uint32]*netlink.HtbClass{}
	for _, cl := range cs {
		if h, ok := cl.(*netlink.HtbClass); ok && h.Handle>>16 == rootMajor {
			out[h.Handle] = h
		}
	}
	return out, nil
}

// class puts one HTB class in place (rates in bytes/s, bursts in bytes).
func (c *converge) class(l netlink.Link, have map[uint32]*netlink.HtbClass, parent, handle uint32, rate, ceil uint64, burst, cburst, quantum uint32) error {
	want := htbClass(l.Attrs().Index, parent, handle, rate, ceil, burst, cburst, quantum)
	readParent := parent
	if parent == netlink.MakeHandle(rootMajor, 0) {
		readParent = netlink.HANDLE_ROOT // how the kernel reports a top class's parent
	}
	if cur := have[handle]; cur != nil && cur.Parent == readParent && cur.Rate == rate && cur.Ceil == ceil &&
		cur.Buffer == want.Buffer && cur.Cbuffer == want.Cbuffer && cur.Quantum == quantum {
		return nil
	}
	if err := writeClass(want); err != nil {
		return err
	}
	c.n++
	return nil
}

func htbClass(link int, parent, handle uint32, rate, ceil uint64, burst, cburst, quantum uint32) *netlink.HtbClass {
	return &netlink.HtbClass{
		ClassAttrs: netlink.ClassAttrs{LinkIndex: link, Parent: parent, Handle: handle},
		Rate:       rate, Ceil: ceil,
		Buffer: netlink.Xmittime(rate, burst), Cbuffer: netlink.Xmittime(ceil, cburst),
		Quantum: quantum,
	}
}

func writeClass(c *netlink.HtbClass) error {
	if err := netlinkx.Do(func() error { return netlink.ClassReplace(c) }); err != nil {
		return fmt.Errorf("class %s: %w", netlink.HandleStr(c.Handle), err)
	}
	return nil
}

// leafQdisc keeps the class's leaf queue: fq_codel, or a TBF whose rate
// never binds, whose burst is the segmentation threshold and whose limit
// is its inner bfifo's byte limit.
func (c *converge) leafQdisc(l netlink.Link, cl Class) error {
	parent := netlink.MakeHandle(rootMajor, cl.Minor)
	for _, q := range c.qdiscs {
		if q.Attrs().Parent != parent {
			continue
		}
		switch q := q.(type) {
		case *netlink.Tbf:
			if c.leaf == LeafTBF && q.Rate == leafRate && q.Limit == cl.Queue && q.Handle == netlink.MakeHandle(cl.Minor, 0) {
				return nil
			}
		case *netlink.FqCodel:
			if c.leaf == LeafFQCodel && q.Handle == netlink.MakeHandle(cl.Minor, 0) {
				return nil
			}
		}
	}
	if err := writeLeaf(c.leaf, l.Attrs().Index, cl, c.segment); err != nil {
		return err
	}
	c.n++
	return nil
}

func writeLeaf(leaf string, link int, cl Class, segment uint32) error {
	parent := netlink.MakeHandle(rootMajor, cl.Minor)
	attrs := netlink.QdiscAttrs{LinkIndex: link, Parent: parent, Handle: netlink.MakeHandle(cl.Minor, 0)}
	var err error
	if leaf == LeafFQCodel {
		err = netlink.QdiscReplace(netlink.NewFqCodel(attrs))
	} else {
		err = replaceTBF(attrs, cl.Queue, segment)
	}
	if err != nil {
		return fmt.Errorf("leaf of class %s: %w", netlink.HandleStr(parent), err)
	}
	return nil
}

// replaceTBF sends the TBF with TCA_TBF_BURST (the library sends only a
// buffer in ticks, which rounds a few kilobytes at 1 Tbit/s to nothing).
func replaceTBF(a netlink.QdiscAttrs, limit, burst uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	req.AddData(&nl.TcMsg{Family: nl.FAMILY_ALL, Ifindex: int32(a.LinkIndex), Handle: a.Handle, Parent: a.Parent})
	req.AddData(nl.NewRtAttr(nl.TCA_KIND, nl.ZeroTerminated("tbf")))
	opt := nl.TcTbfQopt{Limit: limit}
	opt.Rate.Rate = ^uint32(0)
	options := nl.NewRtAttr(nl.TCA_OPTIONS, nil)
	options.AddRtAttr(nl.TCA_TBF_PARMS, opt.Serialize())
	options.AddRtAttr(nl.TCA_TBF_RATE64, nl.Uint64Attr(leafRate))
	options.AddRtAttr(nl.TCA_TBF_BURST, nl.Uint32Attr(burst))
	req.AddData(options)
	return netlinkx.Do(func() error { _, err := req.Execute(unix.NETLINK_ROUTE, 0); return err })
}

// addrFilters keeps one u32 filter per pod address (handle 800::<minor>):
// source address on the egress tree, destination on the ingress tree.
func (c *converge) addrFilters(l netlink.Link, t Tree) error {
	parent := netlink.MakeHandle(rootMajor, 0)
	fs, err := netlink.FilterList(l, parent)
	if err != nil {
		return fmt.Errorf("list filters of %s: %w", l.Attrs().Name, err)
	}
	want := map[uint32]*netlink.U32{}
	for _, cl := range t.Classes {
		if f := addrFilter(l.Attrs().Index, t.Dir, cl); f != nil {
			want[f.Handle] = f
		}
	}
	for _, f := range fs {
		u, ok := f.(*netlink.U32)
		if !ok || u.Priority != FilterPrio {
			continue
		}
		if w := want[u.Handle]; w != nil && sameAddrFilter(u, w) {
			delete(want, u.Handle)
			continue
		}
		if u.Handle&0xfff == 0 {
			continue // the hash table itself
		}
		if err := netlinkx.Do(func() error { return netlink.FilterDel(u) }); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete filter %x: %w", u.Handle, err)
		}
		c.n++
	}
	for _, h := range slices.Sorted(mapsKeys(want)) {
		if err := netlinkx.Do(func() error { return netlink.FilterAdd(want[h]) }); err != nil {
			return fmt.Errorf("filter for class 1:%x: %w", h&0xfff, err)
		}
		c.n++
	}
	return nil
}

// addrFilter is the class's u32 filter on its pod's first IPv4 address
// (source on the egress tree, destination on the ingress tree); nil
// without one.
func addrFilter(link int, dir Direction, cl Class) *netlink.U32 {
	off := int32(12) // IPv4 source
	if dir == Ingress {
		off = 16 // IPv4 destination
	}
	for _, a := range cl.Addrs {
		if !a.Is4() {
			continue
		}
		return &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{LinkIndex: link, Parent: netlink.MakeHandle(rootMajor, 0),
				Handle: 0x80000000 | uint32(cl.Minor), Priority: FilterPrio, Protocol: unix.ETH_P_IP},
			ClassId: netlink.MakeHandle(rootMajor, cl.Minor),
			Sel: &netlink.TcU32Sel{Flags: nl.TC_U32_TERMINAL,
				Keys: []netlink.TcU32Key{{Mask: 0xffffffff, Val: binary.BigEndian.Uint32(a.AsSlice()), Off: off}}},
		}
	}
	return nil
}

func sameAddrFilter(a, b *netlink.U32) bool {
	if a.ClassId != b.ClassId || a.Sel == nil || len(a.Sel.Keys) != 1 || a.Protocol != b.Protocol {
		return false
	}
	k, w := a.Sel.Keys[0], b.Sel.Keys[0]
	return k.Mask == w.Mask && k.Val == w.Val && k.Off == w.Off
}

func mapsKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// redirects keeps, on every shaped veth, a clsact qdisc with one match-all
// u32 filter per shaped direction that redirects to that direction's IFB
// (ingress hook: what the pod sends; egress hook: what it receives), and
// removes Weft's redirects from every other host veth.
func (k *Netlink) redirects(want []Redirect, ifbs [2]netlink.Link) (int, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return 0, fmt.Errorf("list links: %w", err)
	}
	byName := map[string]Redirect{}
	for _, r := range want {
		byName[r.Veth] = r
	}
	prefix := k.VethPrefix
	if prefix == "" {
		prefix = "wv"
	}
	n := 0
	for _, l := range links {
		r, shaped := byName[l.Attrs().Name]
		if !shaped && !strings.HasPrefix(l.Attrs().Name, prefix) {
			continue
		}
		m, err := vethRedirect(l, r, ifbs)
		n += m
		if err != nil {
			return n, fmt.Errorf("redirects on %s: %w", l.Attrs().Name, err)
		}
	}
	return n, nil
}

// hooks are the clsact parents: the veth's ingress carries the pod's
// egress, its egress the pod's ingress.
var hooks = [2]uint32{Egress: netlink.HANDLE_MIN_INGRESS, Ingress: netlink.HANDLE_MIN_EGRESS}

func vethRedirect(l netlink.Link, r Redirect, ifbs [2]netlink.Link) (int, error) {
	n := 0
	if r.Dir[Egress] || r.Dir[Ingress] {
		added, err := ensureClsact(l)
		if err != nil {
			return 0, err
		}
		if added {
			n++
		}
	}
	for _, dir := range []Direction{Egress, Ingress} {
		fs, err := netlink.FilterList(l, hooks[dir])
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return n, err
		}
		ok := false
		for _, f := range fs {
			u, isU32 := f.(*netlink.U32)
			if !isU32 || u.Priority != FilterPrio {
				continue
			}
			if r.Dir[dir] && !ok && redirectsTo(u, ifbs[dir].Attrs().Index) {
				ok = true
				continue
			}
			if err := netlinkx.Do(func() error { return netlink.FilterDel(u) }); err != nil && !errors.Is(err, unix.ENOENT) {
				return n, err
			}
			n++
		}
		if r.Dir[dir] && !ok {
			if err := netlinkx.Do(func() error { return netlink.FilterAdd(redirectFilter(l, hooks[dir], ifbs[dir].Attrs().Index)) }); err != nil {
				return n, fmt.Errorf("redirect %s to %s: %w", dir, ifbs[dir].Attrs().Name, err)
			}
			n++
		}
	}
	return n, nil
}

func ensureClsact(l netlink.Link) (bool, error) {
	qs, err := netlink.QdiscList(l)
	if err != nil {
		return false, err
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return false, nil
		}
	}
	err = netlink.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
		Parent: netlink.HANDLE_CLSACT, Handle: netlink.MakeHandle(0xffff, 0)}})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return false, fmt.Errorf("clsact: %w", err)
	}
	return true, nil
}

func redirectFilter(l netlink.Link, parent uint32, ifb int) *netlink.U32 {
	act := netlink.NewMirredAction(ifb) // egress redirect, stolen
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{LinkIndex: l.Attrs().Index, Parent: parent, Priority: FilterPrio, Protocol: unix.ETH_P_ALL},
		Sel:         &netlink.TcU32Sel{Flags: nl.TC_U32_TERMINAL, Keys: []netlink.TcU32Key{{Mask: 0, Val: 0, Off: 0}}},
		Actions:     []netlink.Action{act},
	}
}

func redirectsTo(u *netlink.U32, ifb int) bool {
	if u.Protocol != unix.ETH_P_ALL || len(u.Actions) != 1 {
		return false
	}
	m, ok := u.Actions[0].(*netlink.MirredAction)
	return ok && m.Ifindex == ifb && m.MirredAction == netlink.TCA_EGRESS_REDIR
}

// remove takes every redirect off the host veths and deletes both IFBs
// (their trees go with them).
func (k *Netlink) remove() (int, error) {
	n := 0
	err := k.in(func() error {
		var ifbs [2]netlink.Link
		m, err := k.redirects(nil, ifbs)
		n += m
		if err != nil {
			return err
		}
		for _, dev := range []string{DeviceEgress, DeviceIngress} {
			err := netlinkx.DelLinkByName(dev)
			if err == nil {
				n++
			} else if !netlinkx.IsNotFound(err) {
				return fmt.Errorf("delete %s: %w", dev, err)
			}
		}
		return nil
	})
	return n, err
}
