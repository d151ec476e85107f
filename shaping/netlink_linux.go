package shaping

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
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
	hts        [2]addrTables
	conn       *conn // open while Applies succeed
}

// conn is where Apply's requests go: route sockets opened once in the
// target netns, so an ADD's handful of requests costs neither a setns nor
// a socket per request. raw carries the requests the library cannot build.
type conn struct {
	h   *netlink.Handle
	raw map[int]*nl.SocketHandle
}

// open returns k's conn, opening it on first use (or after a failure).
func (k *Netlink) open() (*conn, error) {
	if k.conn != nil {
		return k.conn, nil
	}
	h, err := netlinkx.OpenAt(k.NetNS, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	target := netns.None()
	if k.NetNS != "" {
		if target, err = netns.GetFromPath(k.NetNS); err != nil {
			h.Close()
			return nil, fmt.Errorf("open netns %s: %w", k.NetNS, err)
		}
		defer target.Close()
	}
	s, err := nl.GetNetlinkSocketAt(target, netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		return nil, fmt.Errorf("open netlink socket: %w", err)
	}
	k.conn = &conn{h: h, raw: map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}}
	return k.conn, nil
}

// Close releases the sockets (the next Apply opens them again).
func (k *Netlink) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.closeConn()
}

func (k *Netlink) closeConn() {
	if k.conn == nil {
		return
	}
	k.conn.h.Close()
	for _, s := range k.conn.raw {
		s.Close()
	}
	k.conn = nil
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
	c, err := k.open()
	if err != nil {
		return 0, err
	}
	var n int
	switch {
	case d.Off:
		n, err = k.remove(c)
	case full || last == nil:
		n, err = k.applyFull(c, d)
	default:
		n, err = k.applyDiff(c, *last, d)
	}
	if err != nil {
		k.closeConn() // a socket in an unknown state: the next Apply opens anew
	}
	if err == nil && !d.Off {
		k.last = &d
	}
	return n, err
}

// applyFull converges both trees, then the veth redirects, then removes
// the classes no pod needs any more (after their filters and redirects).
func (k *Netlink) applyFull(cn *conn, d Desired) (int, error) {
	leaf := k.Leaf()
	changes := 0
	h := cn.h
	err := func() error {
		var ifbs [2]netlink.Link
		var stale [2][]*netlink.HtbClass
		for _, t := range d.Trees {
			c := &converge{leaf: leaf, conn: cn, hts: &k.hts[t.Dir]}
			l, old, err := c.tree(t)
			changes += c.n
			if err != nil {
				return fmt.Errorf("%s tree: %w", t.Dir, err)
			}
			ifbs[t.Dir], stale[t.Dir] = l, old
			k.ifbs[t.Dir] = l.Attrs().Index
		}
		n, err := k.redirects(h, d.Redirects, ifbs)
		changes += n
		if err != nil {
			return err
		}
		for _, old := range stale {
			for _, cl := range old {
				if err := netlinkx.Do(func() error { return h.ClassDel(cl) }); err != nil && !errors.Is(err, unix.ENOENT) {
					return fmt.Errorf("delete class %s: %w", netlink.HandleStr(cl.Handle), err)
				}
				changes++
			}
		}
		return nil
	}()
	return changes, err
}

// converge counts the changes one tree needed.
type converge struct {
	*conn
	hts     *addrTables // the tree's, learned anew
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
	have, err := classes(c.h, l)
	if err != nil {
		return nil, nil, err
	}
	if c.qdiscs, err = c.h.QdiscList(l); err != nil {
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
	h := c.h
	l, err := h.LinkByName(name)
	if netlinkx.IsNotFound(err) {
		err = h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: name, TxQLen: 1000}})
		if err == nil {
			c.n++
			l, err = h.LinkByName(name)
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
		if err := h.LinkSetTxQLen(l, 1000); err != nil {
			return nil, fmt.Errorf("ifb %s txqueuelen: %w", name, err)
		}
		c.n++
	}
	if l.Attrs().Flags&unix.IFF_UP == 0 {
		if err := h.LinkSetUp(l); err != nil {
			return nil, fmt.Errorf("ifb %s up: %w", name, err)
		}
		c.n++
	}
	return l, nil
}

// root keeps an HTB root 1: (unclassified packets go to the direct queue);
// anything else at the root is replaced.
func (c *converge) root(l netlink.Link, t Tree) error {
	h := c.h
	qs, err := h.QdiscList(l)
	if err != nil {
		return fmt.Errorf("list qdiscs: %w", err)
	}
	for _, q := range qs {
		if _, ok := q.(*netlink.Htb); ok && q.Attrs().Parent == netlink.HANDLE_ROOT && q.Attrs().Handle == netlink.MakeHandle(rootMajor, 0) {
			return nil // r2q only matters for classes without a quantum: every class has one
		}
	}
	q := netlink.NewHtb(netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Parent: netlink.HANDLE_ROOT, Handle: netlink.MakeHandle(rootMajor, 0)})
	q.Rate2Quantum = t.R2Q
	if err := h.QdiscReplace(q); err != nil {
		return fmt.Errorf("htb root on %s: %w", l.Attrs().Name, err)
	}
	c.n++
	return nil
}

func classes(h *netlink.Handle, l netlink.Link) (map[uint32]*netlink.HtbClass, error) {
	cs, err := h.ClassList(l, 0)
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
	if err := writeClass(c.h, want); err != nil {
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

func writeClass(h *netlink.Handle, c *netlink.HtbClass) error {
	if err := netlinkx.Do(func() error { return h.ClassReplace(c) }); err != nil {
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
	if err := writeLeaf(c.conn, c.leaf, l.Attrs().Index, cl, c.segment); err != nil {
		return err
	}
	c.n++
	return nil
}

func writeLeaf(c *conn, leaf string, link int, cl Class, segment uint32) error {
	h := c.h
	parent := netlink.MakeHandle(rootMajor, cl.Minor)
	attrs := netlink.QdiscAttrs{LinkIndex: link, Parent: parent, Handle: netlink.MakeHandle(cl.Minor, 0)}
	var err error
	if leaf == LeafFQCodel {
		err = h.QdiscReplace(netlink.NewFqCodel(attrs))
	} else {
		err = replaceTBF(c.raw, attrs, cl.Queue, segment)
	}
	if err != nil {
		return fmt.Errorf("leaf of class %s: %w", netlink.HandleStr(parent), err)
	}
	return nil
}

// replaceTBF sends the TBF with TCA_TBF_BURST (the library sends only a
// buffer in ticks, which rounds a few kilobytes at 1 Tbit/s to nothing).
func replaceTBF(socks map[int]*nl.SocketHandle, a netlink.QdiscAttrs, limit, burst uint32) error {
	req := nl.NewNetlinkRequest(unix.RTM_NEWQDISC, unix.NLM_F_CREATE|unix.NLM_F_REPLACE|unix.NLM_F_ACK)
	req.Sockets = socks
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
func (k *Netlink) redirects(h *netlink.Handle, want []Redirect, ifbs [2]netlink.Link) (int, error) {
	links, err := h.LinkList()
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
		m, err := vethRedirect(h, l, r, ifbs)
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

func vethRedirect(h *netlink.Handle, l netlink.Link, r Redirect, ifbs [2]netlink.Link) (int, error) {
	n := 0
	if r.Dir[Egress] || r.Dir[Ingress] {
		added, err := ensureClsact(h, l)
		if err != nil {
			return 0, err
		}
		if added {
			n++
		}
	}
	for _, dir := range []Direction{Egress, Ingress} {
		fs, err := h.FilterList(l, hooks[dir])
		if err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return n, err
		}
		other := ifbs[1-dir]
		ok := false
		for _, f := range fs {
			u, isU32 := f.(*netlink.U32)
			if !isU32 || u.Priority != FilterPrio {
				continue
			}
			if other != nil && redirectsTo(u, other.Attrs().Index) {
				// The other hook's: clsact's two hooks share u32's hash
				// tables, so the kernel lists each hook's filters under
				// both (deleting it here would delete it there).
				continue
			}
			if r.Dir[dir] && !ok && redirectsTo(u, ifbs[dir].Attrs().Index) {
				ok = true
				continue
			}
			if err := netlinkx.Do(func() error { return h.FilterDel(u) }); err != nil && !errors.Is(err, unix.ENOENT) {
				return n, err
			}
			n++
		}
		if r.Dir[dir] && !ok {
			if err := netlinkx.Do(func() error { return h.FilterAdd(redirectFilter(l, hooks[dir], ifbs[dir].Attrs().Index)) }); err != nil {
				return n, fmt.Errorf("redirect %s to %s: %w", dir, ifbs[dir].Attrs().Name, err)
			}
			n++
		}
	}
	return n, nil
}

func ensureClsact(h *netlink.Handle, l netlink.Link) (bool, error) {
	qs, err := h.QdiscList(l)
	if err != nil {
		return false, err
	}
	for _, q := range qs {
		if q.Type() == "clsact" {
			return false, nil
		}
	}
	err = h.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
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
func (k *Netlink) remove(c *conn) (int, error) {
	n := 0
	err := k.in(func() error {
		var ifbs [2]netlink.Link
		m, err := k.redirects(c.h, nil, ifbs)
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
