package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// The optional parts of the underlay (up --subnets 2, up --bgp-router).
//
// With two subnets the nodes are split in two halves: the first
// ceil(N/2) stay on the underlay bridge wl-br0 (172.18.0.0/16, with the
// host and the control plane), the rest go onto a second bridge wl-br1
// (172.19.0.0/16) in the same underlay namespace. The router namespace
// wl-router has a leg on each (.0.254) and forwards between them; every
// namespace on one subnet routes the other through it. Nodes of different
// subnets are no longer on one link: plain routes between them fail, which
// is what bgp's ipipMode CrossSubnet is for.
//
// The BGP router (wl-bird) is bird2 from Debian, AS 65001, with a leg on
// each subnet (.0.253) and the test network 203.0.113.0/24 behind it
// (wl-ext, a testserver at 203.0.113.10 answering "ext-server" on the
// pods' echo ports). It has a session with every node (eBGP, TCP-MD5
// password BirdPassword, the node's AS 64512) from its leg on the node's
// subnet, accepts every route (and installs the learned ones in its
// kernel), and announces 203.0.113.0/24, 198.51.100.0/24 and a default
// route. `localcluster birdc` runs birdc on its control socket;
// `localcluster speaker` starts more bird speakers on the underlay.
const (
	Underlay2CIDR = "172.19.0.0/16"
	Underlay2Br   = "wl-br1"
	RouterNS      = "wl-router"
	routerHost    = 254
	MaxSubnets    = 2

	BirdNS       = "wl-bird"
	BirdASN      = 65001
	BirdPassword = "weft-e2e-tor"
	birdHost     = 253
	ExtNS        = "wl-ext"
	ExtNet       = "203.0.113.0/24"
	ExtServerIP  = "203.0.113.10"
	extRouterIP  = "203.0.113.1"
	ExtName      = "ext-server"
	// BirdOtherNet and the default route are what bird announces outside
	// the test network.
	BirdOtherNet = "198.51.100.0/24"
	nodeASN      = 64512
)

// underlays are the subnets and their bridges, in order.
var underlays = []struct{ cidr, bridge string }{{UnderlayCIDR, UnderlayBr}, {Underlay2CIDR, Underlay2Br}}

// hostOn is address .0.<host> of subnet s.
func hostOn(s, host int) netip.Addr {
	a := netip.MustParsePrefix(underlays[s].cidr).Addr().As4()
	a[3] = byte(host)
	return netip.AddrFrom4(a)
}

// RouterIP is the router's address on subnet s (0-based).
func RouterIP(s int) netip.Addr { return hostOn(s, routerHost) }

// BirdIP is the BGP router's address on subnet s (0-based).
func BirdIP(s int) netip.Addr { return hostOn(s, birdHost) }

// NodeSubnet is the subnet (0-based) of node i (1-based) of n nodes on
// subnets subnets: the first ceil(n/subnets) on the first, and so on.
func NodeSubnet(i, n, subnets int) int {
	if subnets <= 1 {
		return 0
	}
	per := (n + subnets - 1) / subnets
	return (i - 1) / per
}

// NodeAddr is the underlay address of node i on its subnet.
func NodeAddr(i, n, subnets int) netip.Addr {
	a := NodeIP(i).As4()
	b := netip.MustParsePrefix(underlays[NodeSubnet(i, n, subnets)].cidr).Addr().As4()
	a[0], a[1] = b[0], b[1]
	return netip.AddrFrom4(a)
}

func (c *Cluster) nodeIP(i int) netip.Addr { return NodeAddr(i, c.opt.Nodes, c.opt.Subnets) }

// ensureSecondSubnet adds the second bridge and the router between the two.
func ensureSecondSubnet(ctx context.Context) error {
	if run(ctx, "ip", "-n", UnderlayNS, "link", "show", Underlay2Br) != nil {
		if err := run(ctx, "ip", "-n", UnderlayNS, "link", "add", Underlay2Br, "type", "bridge"); err != nil {
			return err
		}
	}
	if err := run(ctx, "ip", "-n", UnderlayNS, "link", "set", Underlay2Br, "up"); err != nil {
		return err
	}
	for s := range underlays {
		if err := attachTo(ctx, RouterNS, s, fmt.Sprintf("eth%d", s), RouterIP(s)); err != nil {
			return err
		}
	}
	return forwarding(ctx, RouterNS)
}

func forwarding(ctx context.Context, ns string) error {
	return run(ctx, "ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
}

// routeOthers gives ns, which sits on subnet s of subnets, a route to
// every other subnet through the router.
func routeOthers(ctx context.Context, ns string, s, subnets int) error {
	for o := range underlays[:subnets] {
		if o == s {
			continue
		}
		if err := run(ctx, "ip", "-n", ns, "route", "replace", underlays[o].cidr, "via", RouterIP(s).String()); err != nil {
			return err
		}
	}
	return nil
}

// startBGPRouter makes the BGP router's namespace (a leg per subnet), the
// test network behind it and its server, and starts bird.
func (c *Cluster) startBGPRouter(ctx context.Context) error {
	for s := range c.opt.Subnets {
		if err := attachTo(ctx, BirdNS, s, fmt.Sprintf("eth%d", s), BirdIP(s)); err != nil {
			return err
		}
	}
	if err := forwarding(ctx, BirdNS); err != nil {
		return err
	}
	if err := ensureNetns(ctx, ExtNS); err != nil {
		return err
	}
	if run(ctx, "ip", "-n", BirdNS, "link", "show", "ext0") != nil {
		if err := run(ctx, "ip", "-n", BirdNS, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns", ExtNS); err != nil {
			return err
		}
	}
	for _, cmd := range [][]string{
		{"-n", BirdNS, "addr", "replace", extRouterIP + "/24", "dev", "ext0"},
		{"-n", BirdNS, "link", "set", "ext0", "up"},
		{"-n", ExtNS, "addr", "replace", ExtServerIP + "/24", "dev", "eth0"},
		{"-n", ExtNS, "link", "set", "eth0", "up"},
		{"-n", ExtNS, "route", "replace", "default", "via", extRouterIP},
	} {
		if err := run(ctx, "ip", cmd...); err != nil {
			return err
		}
	}
	if err := c.start(procSpec{Name: "ext-server", Netns: ExtNS, Argv: []string{c.bin("testserver"), "serve", "--name", ExtName,
		"--tcp", "8080", "--udp", "5353"}}); err != nil {
		return err
	}
	return c.startBird(ctx, "bird", BirdNS, c.birdConf())
}

// startBird writes conf and runs bird with it in namespace ns, its control
// socket at <state>/bird/<name>.ctl.
func (c *Cluster) startBird(ctx context.Context, name, ns, conf string) error {
	birdBin, err := lookPath("bird")
	if err != nil {
		return fmt.Errorf("bird2 is needed (apt-get install -y bird2, or make deps): %w", err)
	}
	dir := c.path("bird")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", dir, err)
	}
	file := filepath.Join(dir, name+".conf")
	if err := os.WriteFile(file, []byte(conf), 0o600); err != nil {
		return fmt.Errorf("write bird config: %w", err)
	}
	return c.start(procSpec{Name: "bird-" + name, Netns: ns, Argv: []string{birdBin, "-f", "-c", file, "-s", c.birdSocket(name)}})
}

func (c *Cluster) birdSocket(name string) string { return c.path("bird", name+".ctl") }

var speakerName = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

// StartSpeaker runs another bird2 BGP speaker on the underlay (a test's
// misbehaving peer): namespace wl-<name> with addr on the subnet that
// contains it, bird with config conf, its control socket
// SpeakerSocket(name). Down removes it with the rest.
func (c *Cluster) StartSpeaker(ctx context.Context, name string, addr netip.Addr, conf string) error {
	if !speakerName.MatchString(name) || name == "bird" {
		return fmt.Errorf("speaker name %q: want 1-10 lower-case letters and digits, not bird", name)
	}
	st, err := c.readState()
	if err != nil || !st.Complete {
		return fmt.Errorf("start speaker %s: the cluster is not up", name)
	}
	sub := -1
	for s := range underlays[:max(st.Subnets, 1)] {
		if netip.MustParsePrefix(underlays[s].cidr).Contains(addr) {
			sub = s
		}
	}
	if sub < 0 {
		return fmt.Errorf("speaker %s: %s is on none of the cluster's underlay subnets", name, addr)
	}
	ns := Prefix + name
	if err := attachTo(ctx, ns, sub, "eth0", addr); err != nil {
		return err
	}
	if err := routeOthers(ctx, ns, sub, max(st.Subnets, 1)); err != nil {
		return err
	}
	return c.startBird(ctx, name, ns, conf)
}

// StopSpeaker stops a speaker StartSpeaker made and removes its namespace.
func (c *Cluster) StopSpeaker(ctx context.Context, name string) error {
	if !speakerName.MatchString(name) || name == "bird" {
		return fmt.Errorf("speaker name %q: not a speaker", name)
	}
	if pid, ok := c.running("bird-" + name); ok {
		stopPids(ctx, []int{pid}, 5*time.Second)
	}
	_ = os.Remove(c.pidFile("bird-" + name))
	if netnsExists(Prefix + name) {
		return run(ctx, "ip", "netns", "del", Prefix+name)
	}
	return nil
}

// SpeakerSocket is the control socket of a speaker ("bird": the BGP router).
func (c *Cluster) SpeakerSocket(name string) string { return c.birdSocket(name) }

// birdConf is the BGP router's configuration: one eBGP session per node.
func (c *Cluster) birdConf() string {
	var b strings.Builder
	fmt.Fprintf(&b, `router id %s;
log stderr all;
protocol device {}
protocol direct { ipv4; interface "ext0"; }
protocol kernel { ipv4 { import none; export where source = RTS_BGP; }; }
protocol static announced { ipv4; route %s blackhole; route 0.0.0.0/0 blackhole; }
template bgp node {
	local as %d;
	password "%s";
	connect retry time 1;
	graceful restart on;
	ipv4 { import all; export where source ~ [RTS_STATIC, RTS_DEVICE]; };
}
`, BirdIP(0), BirdOtherNet, BirdASN, BirdPassword)
	for i := 1; i <= c.opt.Nodes; i++ {
		s := NodeSubnet(i, c.opt.Nodes, c.opt.Subnets)
		fmt.Fprintf(&b, "protocol bgp node%d from node { source address %s; neighbor %s as %d; }\n", i, BirdIP(s), c.nodeIP(i), nodeASN)
	}
	return b.String()
}

// Birdc runs birdc on the control socket of speaker name ("bird": the
// BGP router) and returns its output.
func (c *Cluster) Birdc(ctx context.Context, name string, args ...string) (string, error) {
	return output(ctx, "birdc", append([]string{"-s", c.birdSocket(name)}, args...)...)
}
