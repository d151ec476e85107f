package ipip

import (
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// FakeLinks is an in-memory Links for tests of the kernel link on
// machines without the ipip module. It keeps what was asked (links by
// name, their MTU, addresses and up flag) and a log of the calls; Fail
// makes the named call ("LinkAdd", "AddrReplace", ...) return an error.
type FakeLinks struct {
	mu    sync.Mutex
	links map[string]netlink.Link
	addrs map[string][]string
	up    map[string]bool
	calls []string
	fail  map[string]error
}

var _ Links = (*FakeLinks)(nil)

// NewFakeLinks returns a namespace with no links.
func NewFakeLinks() *FakeLinks {
	return &FakeLinks{links: map[string]netlink.Link{}, addrs: map[string][]string{}, up: map[string]bool{}, fail: map[string]error{}}
}

// Fail makes every later call op fail with err (nil: succeed again).
func (f *FakeLinks) Fail(op string, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail[op] = err
}

// Put adds l as if it were already there.
func (f *FakeLinks) Put(l netlink.Link) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.links[l.Attrs().Name] = l
	f.up[l.Attrs().Name] = l.Attrs().Flags&net.FlagUp != 0
}

// Calls returns the calls made so far ("LinkAdd weft.ipip", ...) and
// forgets them.
func (f *FakeLinks) Calls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

// Describe is the state of link name: "" when absent, else e.g. "ipip
// local 192.0.2.1 remote <nil> mtu 1480 up 10.244.1.0/32".
func (f *FakeLinks) Describe(name string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	l, ok := f.links[name]
	if !ok {
		return ""
	}
	s := describe(l) + fmt.Sprintf(" mtu %d", l.Attrs().MTU)
	if t, ok := l.(*netlink.Iptun); ok && t.PMtuDisc == 1 {
		s += " pmtudisc"
	}
	if f.up[name] {
		s += " up"
	}
	a := append([]string(nil), f.addrs[name]...)
	sort.Strings(a)
	return strings.TrimSpace(s + " " + strings.Join(a, " "))
}

func (f *FakeLinks) call(op, name string) error {
	f.calls = append(f.calls, op+" "+name)
	return f.fail[op]
}

// LinkByName implements Links.
func (f *FakeLinks) LinkByName(name string) (netlink.Link, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.call("LinkByName", name); err != nil {
		return nil, err
	}
	l, ok := f.links[name]
	if !ok {
		return nil, netlink.LinkNotFoundError{}
	}
	return l, nil
}

// LinkAdd implements Links.
func (f *FakeLinks) LinkAdd(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	if err := f.call("LinkAdd", name); err != nil {
		return err
	}
	if _, ok := f.links[name]; ok {
		return fmt.Errorf("file exists")
	}
	f.links[name] = l
	return nil
}

// LinkDel implements Links.
func (f *FakeLinks) LinkDel(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	if err := f.call("LinkDel", name); err != nil {
		return err
	}
	if _, ok := f.links[name]; !ok {
		return netlink.LinkNotFoundError{}
	}
	delete(f.links, name)
	delete(f.addrs, name)
	delete(f.up, name)
	return nil
}

// LinkSetMTU implements Links.
func (f *FakeLinks) LinkSetMTU(l netlink.Link, mtu int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	if err := f.call("LinkSetMTU", name); err != nil {
		return err
	}
	have, ok := f.links[name]
	if !ok {
		return netlink.LinkNotFoundError{}
	}
	have.Attrs().MTU = mtu
	return nil
}

// LinkSetUp implements Links.
func (f *FakeLinks) LinkSetUp(l netlink.Link) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	if err := f.call("LinkSetUp", name); err != nil {
		return err
	}
	have, ok := f.links[name]
	if !ok {
		return netlink.LinkNotFoundError{}
	}
	f.up[name] = true
	have.Attrs().Flags |= net.FlagUp
	return nil
}

// AddrList implements Links (IPv4 only: what the fake is given).
func (f *FakeLinks) AddrList(l netlink.Link, _ int) ([]netlink.Addr, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	if err := f.call("AddrList", name); err != nil {
		return nil, err
	}
	if _, ok := f.links[name]; !ok {
		return nil, netlink.LinkNotFoundError{}
	}
	var out []netlink.Addr
	for _, s := range f.addrs[name] {
		ip, n, err := net.ParseCIDR(s)
		if err != nil {
			return nil, err
		}
		n.IP = ip
		out = append(out, netlink.Addr{IPNet: n})
	}
	return out, nil
}

// AddrDel implements Links.
func (f *FakeLinks) AddrDel(l netlink.Link, a *netlink.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	if err := f.call("AddrDel", name); err != nil {
		return err
	}
	s := a.IPNet.String()
	for i, have := range f.addrs[name] {
		if have == s {
			f.addrs[name] = append(f.addrs[name][:i:i], f.addrs[name][i+1:]...)
			return nil
		}
	}
	return unix.EADDRNOTAVAIL
}

// PutAddr adds an address to link name as if it were already there.
func (f *FakeLinks) PutAddr(name, cidr string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.addrs[name] = append(f.addrs[name], cidr)
}

// AddrReplace implements Links.
func (f *FakeLinks) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	name := l.Attrs().Name
	if err := f.call("AddrReplace", name); err != nil {
		return err
	}
	if _, ok := f.links[name]; !ok {
		return netlink.LinkNotFoundError{}
	}
	s := a.IPNet.String()
	for _, have := range f.addrs[name] {
		if have == s {
			return nil
		}
	}
	f.addrs[name] = append(f.addrs[name], s)
	return nil
}
