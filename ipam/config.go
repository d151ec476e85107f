package ipam

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"

	"github.com/weftnet/weft/internal/cniargs"
	"github.com/weftnet/weft/internal/subnetfile"
	"github.com/weftnet/weft/ipam/allocator"
)

// DefaultDataDir is the parent of every network's data directory, as for
// host-local.
const DefaultDataDir = "/var/lib/cni/networks"

// SupportedVersions lists the CNI spec versions weft-ipam speaks.
func SupportedVersions() []string {
	return []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"}
}

// netConf is the part of the network configuration weft-ipam reads.
type netConf struct {
	CNIVersion    string          `json:"cniVersion"`
	Name          string          `json:"name"`
	IPAM          *ipamConf       `json:"ipam"`
	DNS           types.DNS       `json:"dns"`
	RuntimeConfig runtimeConf     `json:"runtimeConfig"`
	Args          *argsConf       `json:"args"`
	PrevResult    json.RawMessage `json:"prevResult"`
	// GC only. RawMessage keeps "present but null" apart from "absent".
	ValidAttachments json.RawMessage `json:"cni.dev/valid-attachments"`
	Attachments      json.RawMessage `json:"cni.dev/attachments"`
}

type runtimeConf struct {
	IPs []string `json:"ips"`
}

type argsConf struct {
	CNI *struct {
		IPs []string `json:"ips"`
	} `json:"cni"`
}

// rangeConf is one host-local range as written in JSON.
type rangeConf struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

// ipamConf is the "ipam" section: host-local's keys plus weft's.
type ipamConf struct {
	Type string `json:"type"`
	// Legacy host-local single range at the top of the section.
	rangeConf
	Ranges     [][]rangeConf     `json:"ranges"`
	Routes     []json.RawMessage `json:"routes"`
	DataDir    string            `json:"dataDir"`
	ResolvConf string            `json:"resolvConf"`
	// Weft: allocate from the node subnet weftd writes.
	SubnetFile string `json:"subnetFile"`
	NodeSubnet bool   `json:"nodeSubnet"`
}

// config is the decoded configuration common to every verb.
type config struct {
	raw     *netConf
	dataDir string // the network's own directory: <dataDir>/<name>
}

// pool is what ADD and STATUS need on top of config: the resolved range sets,
// routes and DNS. Resolving reads the subnet file, which DEL, CHECK and GC
// must not depend on.
type pool struct {
	sets   []allocator.RangeSet
	fields []string // config field of each set, for messages
	routes []*types.Route
	dns    types.DNS
}

func invalid(format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, fmt.Sprintf(format, a...), "")
}

// parseConfig decodes stdin data and validates what every verb needs.
func parseConfig(data []byte) (*config, error) {
	var n netConf
	if err := json.Unmarshal(data, &n); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, "decode network configuration: "+err.Error(), "")
	}
	if sv := SupportedVersions(); !slices.Contains(sv, n.CNIVersion) {
		return nil, types.NewError(types.ErrIncompatibleCNIVersion,
			fmt.Sprintf("cniVersion %q is not supported (supported: %s)", n.CNIVersion, strings.Join(sv, ", ")), "")
	}
	if n.Name == "" {
		return nil, invalid("name: missing network name")
	}
	if err := utils.ValidateNetworkName(n.Name); err != nil {
		return nil, invalid("name: %q: %s", n.Name, err.Msg)
	}
	if n.IPAM == nil {
		return nil, invalid("ipam: missing section")
	}
	dir := n.IPAM.DataDir
	if dir == "" {
		dir = DefaultDataDir
	}
	return &config{raw: &n, dataDir: filepath.Join(dir, n.Name)}, nil
}

// subnetFilePath returns the node subnet file to use, or "".
func (c *config) subnetFilePath() string {
	if c.raw.IPAM.SubnetFile != "" {
		return c.raw.IPAM.SubnetFile
	}
	if c.raw.IPAM.NodeSubnet {
		return subnetfile.DefaultPath
	}
	return ""
}

// resolve builds the pool: the node subnet (if configured) first, then the
// legacy single range, then "ranges". Every error names its field.
func (c *config) resolve() (*pool, error) {
	ic := c.raw.IPAM
	p := &pool{dns: c.raw.DNS}
	var nodeGW netip.Addr
	if path := c.subnetFilePath(); path != "" {
		f, err := subnetfile.Read(path)
		if errors.Is(err, os.ErrNotExist) {
			return nil, types.NewError(types.ErrTryAgainLater,
				fmt.Sprintf("ipam.subnetFile: %s does not exist yet (is weftd running?)", path), "")
		}
		var pathErr *fs.PathError
		if errors.As(err, &pathErr) {
			return nil, types.NewError(types.ErrIOFailure, fmt.Sprintf("ipam.subnetFile: %v", err), "")
		}
		if err != nil {
			return nil, invalid("ipam.subnetFile: %v", err)
		}
		nodeGW = f.Gateway()
		r, err := allocator.NewRange(f.Subnet, netip.Addr{}, netip.Addr{}, nodeGW)
		if err != nil {
			return nil, invalid("ipam.subnetFile %s: %v", path, err)
		}
		p.sets = append(p.sets, allocator.RangeSet{r})
	}
	type namedSet struct {
		field string
		confs []rangeConf
	}
	var raw []namedSet
	if ic.rangeConf != (rangeConf{}) {
		raw = append(raw, namedSet{"ipam", []rangeConf{ic.rangeConf}})
	}
	for i, rs := range ic.Ranges {
		raw = append(raw, namedSet{fmt.Sprintf("ipam.ranges[%d]", i), rs})
	}
	fields := make([]string, len(p.sets), len(p.sets)+len(raw))
	for i := range fields {
		fields[i] = "ipam.subnetFile"
	}
	for _, ns := range raw {
		set, err := parseRangeSet(ns.field, ns.confs)
		if err != nil {
			return nil, err
		}
		p.sets = append(p.sets, set)
		fields = append(fields, ns.field)
	}
	p.fields = fields
	if len(p.sets) == 0 {
		return nil, invalid("ipam.ranges: no ranges configured (set ranges, subnet or subnetFile)")
	}
	for i := range p.sets {
		for j := 0; j < i; j++ {
			if a, b, ok := p.sets[i].Overlaps(p.sets[j]); ok {
				return nil, invalid("%s: range %s overlaps %s range %s", fields[i], a, fields[j], b)
			}
		}
	}
	routes, err := parseRoutes(ic.Routes)
	if err != nil {
		return nil, err
	}
	p.routes = routes
	if ic.Routes == nil && nodeGW.IsValid() {
		p.routes = []*types.Route{defaultRoute(nodeGW)}
	}
	if ic.ResolvConf != "" {
		dns, err := parseResolvConf(ic.ResolvConf)
		if err != nil {
			return nil, invalid("ipam.resolvConf: %v", err)
		}
		p.dns = dns
	}
	return p, nil
}

func parseRangeSet(field string, confs []rangeConf) (allocator.RangeSet, error) {
	if len(confs) == 0 {
		return nil, invalid("%s: empty range set", field)
	}
	set := make(allocator.RangeSet, 0, len(confs))
	for i, rc := range confs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if field == "ipam" {
			f = field // legacy keys sit directly in the ipam section
		}
		r, err := parseRange(rc)
		if err != nil {
			return nil, invalid("%s.%v", f, err)
		}
		set = append(set, r)
	}
	if err := set.Validate(); err != nil {
		return nil, invalid("%s%v", field, err)
	}
	return set, nil
}

func parseRange(rc rangeConf) (allocator.Range, error) {
	if rc.Subnet == "" {
		return allocator.Range{}, &allocator.FieldError{Field: "subnet", Msg: "missing"}
	}
	subnet, err := netip.ParsePrefix(rc.Subnet)
	if err != nil {
		return allocator.Range{}, &allocator.FieldError{Field: "subnet", Msg: err.Error()}
	}
	var addrs [3]netip.Addr
	for i, f := range []struct{ name, val string }{
		{"rangeStart", rc.RangeStart}, {"rangeEnd", rc.RangeEnd}, {"gateway", rc.Gateway},
	} {
		if f.val == "" {
			continue
		}
		a, err := netip.ParseAddr(f.val)
		if err != nil {
			return allocator.Range{}, &allocator.FieldError{Field: f.name, Msg: err.Error()}
		}
		addrs[i] = a.Unmap()
	}
	return allocator.NewRange(netip.PrefixFrom(subnet.Addr().Unmap(), subnet.Bits()), addrs[0], addrs[1], addrs[2])
}

func parseRoutes(raw []json.RawMessage) ([]*types.Route, error) {
	routes := make([]*types.Route, 0, len(raw))
	for i, m := range raw {
		var r types.Route
		if err := json.Unmarshal(m, &r); err != nil {
			return nil, invalid("ipam.routes[%d]: %v", i, err)
		}
		if r.Dst.IP == nil {
			return nil, invalid("ipam.routes[%d].dst: missing", i)
		}
		if r.GW != nil && (r.GW.To4() == nil) != (r.Dst.IP.To4() == nil) {
			return nil, invalid("ipam.routes[%d].gw: %s is not of the family of dst %s", i, r.GW, r.Dst.String())
		}
		routes = append(routes, &r)
	}
	return routes, nil
}

func defaultRoute(gw netip.Addr) *types.Route {
	r := &types.Route{GW: gw.AsSlice()}
	if gw.Is4() {
		r.Dst.IP, r.Dst.Mask = make([]byte, 4), make([]byte, 4)
	} else {
		r.Dst.IP, r.Dst.Mask = make([]byte, 16), make([]byte, 16)
	}
	return r
}

// parseResolvConf reads nameserver, domain, search and options lines.
func parseResolvConf(path string) (types.DNS, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return types.DNS{}, err
	}
	var dns types.DNS
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 || strings.HasPrefix(f[0], "#") || strings.HasPrefix(f[0], ";") {
			continue
		}
		switch f[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, f[1])
		case "domain":
			dns.Domain = f[1]
		case "search":
			dns.Search = append(dns.Search, f[1:]...)
		case "options":
			dns.Options = append(dns.Options, f[1:]...)
		}
	}
	return dns, sc.Err()
}

// requestedIPs gathers addresses asked for through CNI_ARGS "IP=",
// runtimeConfig "ips" and args.cni.ips. CNI_ARGS never fails on unknown
// keys: runtimes pass K8S_POD_NAME and friends.
func (c *config) requestedIPs(cniArgs string) ([]netip.Addr, error) {
	var out []netip.Addr
	add := func(field, s string) error {
		s = strings.TrimSpace(s)
		if s == "" {
			return nil
		}
		a, err := parseIPOrCIDR(s)
		if err != nil {
			return fmt.Errorf("%s: %q is not an IP address", field, s)
		}
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
		return nil
	}
	for _, v := range cniargs.Values(cniArgs, "IP") {
		for _, s := range strings.Split(v, ",") {
			if err := add("CNI_ARGS IP", s); err != nil {
				return nil, types.NewError(types.ErrInvalidEnvironmentVariables, err.Error(), "")
			}
		}
	}
	for _, s := range c.raw.RuntimeConfig.IPs {
		if err := add("runtimeConfig.ips", s); err != nil {
			return nil, invalid("%v", err)
		}
	}
	if a := c.raw.Args; a != nil && a.CNI != nil {
		for _, s := range a.CNI.IPs {
			if err := add("args.cni.ips", s); err != nil {
				return nil, invalid("%v", err)
			}
		}
	}
	return out, nil
}

func parseIPOrCIDR(s string) (netip.Addr, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Addr{}, err
		}
		return p.Addr().Unmap(), nil
	}
	a, err := netip.ParseAddr(s)
	return a.Unmap(), err
}

// validAttachments decodes the GC list. present is false when neither key
// was given (a JSON null counts as an empty list).
func (c *config) validAttachments() (map[types.GCAttachment]struct{}, bool, error) {
	valid := map[types.GCAttachment]struct{}{}
	present := false
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"cni.dev/valid-attachments", c.raw.ValidAttachments}, {"cni.dev/attachments", c.raw.Attachments}} {
		if f.raw == nil {
			continue
		}
		present = true
		var list []types.GCAttachment
		if err := json.Unmarshal(f.raw, &list); err != nil {
			return nil, false, types.NewError(types.ErrDecodingFailure, f.name+": "+err.Error(), "")
		}
		for _, a := range list {
			valid[a] = struct{}{}
		}
	}
	return valid, present, nil
}
