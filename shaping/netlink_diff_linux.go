package shaping

import (
	"errors"
	"fmt"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weftnet/weft/internal/netlinkx"
)

// applyDiff writes only what differs between the last Apply (old) and d,
// in the same order as a full Apply: classes, leaves and filters; then
// the redirects of the veths whose redirect changed; then the classes no
// pod needs. It reads nothing back: the next full Apply repairs drift.
func (k *Netlink) applyDiff(c *conn, old, d Desired) (int, error) {
	leaf := k.Leaf()
	n := 0
	err := func() error {
		for _, t := range d.Trees {
			m, err := k.treeDiff(c, leaf, old.Trees[t.Dir], t)
			n += m
			if err != nil {
				return fmt.Errorf("%s tree: %w", t.Dir, err)
			}
		}
		m, err := k.redirectsDiff(c.h, old.Redirects, d.Redirects)
		n += m
		if err != nil {
			return err
		}
		for _, t := range d.Trees {
			m, err := k.removeClasses(c.h, old.Trees[t.Dir], t)
			n += m
			if err != nil {
				return fmt.Errorf("%s tree: %w", t.Dir, err)
			}
		}
		return nil
	}()
	return n, err
}

func (k *Netlink) treeDiff(c *conn, leaf string, old, t Tree) (int, error) {
	link := k.ifbs[t.Dir]
	n := 0
	if old.Ceiling != t.Ceiling {
		root := htbClass(link, netlink.MakeHandle(rootMajor, 0), netlink.MakeHandle(rootMajor, rootClass),
			t.Ceiling, t.Ceiling, DefaultMaxBurst, DefaultMaxBurst, maxQuantum)
		if err := writeClass(c.h, root); err != nil {
			return n, err
		}
		n++
	}
	before := classesByMinor(old)
	for _, cl := range t.Classes {
		oc, had := before[cl.Minor]
		if had && sameClass(oc, cl) && old.Segment == t.Segment {
			continue
		}
		if err := writeClass(c.h, htbClass(link, netlink.MakeHandle(rootMajor, rootClass), netlink.MakeHandle(rootMajor, cl.Minor),
			cl.Rate, cl.Ceil, cl.Burst, cl.Cburst, cl.Quantum)); err != nil {
			return n, err
		}
		if !had || oc.Queue != cl.Queue || old.Segment != t.Segment {
			if err := writeLeaf(c, leaf, link, cl, t.Segment); err != nil {
				return n, err
			}
		}
		if !had || !slices.Equal(oc.Addrs, cl.Addrs) {
			if had {
				if err := delAddrFilters(c.h, link, t.Dir, &k.hts[t.Dir], oc); err != nil {
					return n, err
				}
			}
			for _, f := range addrFilters(link, t.Dir, cl) {
				if err := addAddrFilter(c.h, link, &k.hts[t.Dir], f); err != nil {
					return n, err
				}
			}
		}
		n++
	}
	return n, nil
}

func classesByMinor(t Tree) map[uint16]Class {
	m := make(map[uint16]Class, len(t.Classes))
	for _, c := range t.Classes {
		m[c.Minor] = c
	}
	return m
}

func sameClass(a, b Class) bool {
	return a.Veth == b.Veth && a.Rate == b.Rate && a.Ceil == b.Ceil && a.Burst == b.Burst && a.Cburst == b.Cburst &&
		a.Quantum == b.Quantum && a.Queue == b.Queue && slices.Equal(a.Addrs, b.Addrs)
}

// redirectsDiff converges the veths whose redirect changed, and takes the
// redirects off veths that are no longer shaped (a veth already gone with
// its pod is fine).
func (k *Netlink) redirectsDiff(h *netlink.Handle, old, want []Redirect) (int, error) {
	ifbs := [2]netlink.Link{
		&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Index: k.ifbs[Egress], Name: DeviceEgress}},
		&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Index: k.ifbs[Ingress], Name: DeviceIngress}},
	}
	before := map[string]Redirect{}
	for _, r := range old {
		before[r.Veth] = r
	}
	todo := map[string]Redirect{}
	fresh := map[string]bool{} // veths the last Apply did not shape: nothing of ours on them
	for _, r := range want {
		if o, ok := before[r.Veth]; !ok {
			fresh[r.Veth] = true
			todo[r.Veth] = r
		} else if o != r {
			todo[r.Veth] = r
		}
		delete(before, r.Veth)
	}
	for v := range before {
		todo[v] = Redirect{Veth: v}
	}
	n := 0
	for _, v := range slices.Sorted(mapsKeys(todo)) {
		l, err := h.LinkByName(v)
		if netlinkx.IsNotFound(err) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("redirects on %s: %w", v, err)
		}
		var m int
		if fresh[v] {
			m, err = addRedirects(h, l, todo[v], ifbs)
		} else {
			m, err = vethRedirect(h, l, todo[v], ifbs)
		}
		n += m
		if err != nil {
			return n, fmt.Errorf("redirects on %s: %w", v, err)
		}
	}
	return n, nil
}

// removeClasses deletes the filters and classes of pods that left t.
func (k *Netlink) removeClasses(h *netlink.Handle, old, t Tree) (int, error) {
	now := classesByMinor(t)
	n := 0
	for _, oc := range old.Classes {
		if _, ok := now[oc.Minor]; ok {
			continue
		}
		if err := delAddrFilters(h, k.ifbs[t.Dir], t.Dir, &k.hts[t.Dir], oc); err != nil {
			return n, err
		}
		cl := &netlink.HtbClass{ClassAttrs: netlink.ClassAttrs{LinkIndex: k.ifbs[t.Dir],
			Parent: netlink.MakeHandle(rootMajor, rootClass), Handle: netlink.MakeHandle(rootMajor, oc.Minor)}}
		if err := netlinkx.Do(func() error { return h.ClassDel(cl) }); err != nil && !errors.Is(err, unix.ENOENT) {
			return n, fmt.Errorf("delete class 1:%x: %w", oc.Minor, err)
		}
		n++
	}
	return n, nil
}

// addRedirects places the redirects of a veth that has none of Weft's
// (the pod was just added): clsact, then one filter per shaped direction,
// without reading anything first.
func addRedirects(h *netlink.Handle, l netlink.Link, r Redirect, ifbs [2]netlink.Link) (int, error) {
	err := h.QdiscAdd(&netlink.Clsact{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index,
		Parent: netlink.HANDLE_CLSACT, Handle: netlink.MakeHandle(0xffff, 0)}})
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return 0, fmt.Errorf("clsact: %w", err)
	}
	n := 1
	for _, dir := range []Direction{Egress, Ingress} {
		if !r.Dir[dir] {
			continue
		}
		if err := netlinkx.Do(func() error { return h.FilterAdd(redirectFilter(l, hooks[dir], ifbs[dir].Attrs().Index)) }); err != nil {
			return n, fmt.Errorf("redirect %s to %s: %w", dir, ifbs[dir].Attrs().Name, err)
		}
		n++
	}
	return n, nil
}
