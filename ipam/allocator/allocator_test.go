package allocator

import (
	"errors"
	"net/netip"
	"testing"
)

func mustRange(t *testing.T, subnet, start, end, gw string) Range {
	t.Helper()
	var a [3]netip.Addr
	for i, s := range []string{start, end, gw} {
		if s != "" {
			a[i] = netip.MustParseAddr(s)
		}
	}
	r, err := NewRange(netip.MustParsePrefix(subnet), a[0], a[1], a[2])
	if err != nil {
		t.Fatalf("NewRange(%s,%s,%s,%s): %v", subnet, start, end, gw, err)
	}
	return r
}

type used map[netip.Addr]bool

func (u used) has(a netip.Addr) bool { return u[a] }

func (u used) add(s ...string) used {
	for _, x := range s {
		u[netip.MustParseAddr(x)] = true
	}
	return u
}

func TestNewRangeDefaults(t *testing.T) {
	cases := []struct {
		subnet, start, end, gw string
	}{
		{"10.0.0.0/24", "10.0.0.1", "10.0.0.254", "10.0.0.1"},
		{"10.0.0.77/24", "10.0.0.1", "10.0.0.254", "10.0.0.1"}, // host bits cleared
		{"10.0.0.0/30", "10.0.0.1", "10.0.0.2", "10.0.0.1"},
		{"fd00::/120", "fd00::1", "fd00::ff", "fd00::1"},
	}
	for _, c := range cases {
		r := mustRange(t, c.subnet, "", "", "")
		if r.Start.String() != c.start || r.End.String() != c.end || r.Gateway.String() != c.gw {
			t.Errorf("%s: got start %s end %s gw %s, want %s %s %s", c.subnet, r.Start, r.End, r.Gateway, c.start, c.end, c.gw)
		}
	}
}

func TestNewRangeErrorsNameField(t *testing.T) {
	cases := []struct {
		subnet, start, end, gw string
		field                  string
	}{
		{"10.0.0.0/31", "", "", "", "subnet"},
		{"10.0.0.0/32", "", "", "", "subnet"},
		{"fd00::/127", "", "", "", "subnet"},
		{"10.0.0.0/24", "10.0.1.5", "", "", "rangeStart"},
		{"10.0.0.0/24", "10.0.0.0", "", "", "rangeStart"},         // network address
		{"10.0.0.0/24", "", "10.0.0.255", "", "rangeEnd"},         // broadcast
		{"10.0.0.0/24", "", "10.0.1.1", "", "rangeEnd"},           // outside
		{"10.0.0.0/24", "10.0.0.50", "10.0.0.40", "", "rangeEnd"}, // end before start
		{"10.0.0.0/24", "", "", "10.0.1.1", "gateway"},
		{"10.0.0.0/24", "", "", "10.0.0.255", "gateway"},
		{"10.0.0.0/24", "fd00::1", "", "", "rangeStart"}, // family
	}
	for _, c := range cases {
		var a [3]netip.Addr
		for i, s := range []string{c.start, c.end, c.gw} {
			if s != "" {
				a[i] = netip.MustParseAddr(s)
			}
		}
		_, err := NewRange(netip.MustParsePrefix(c.subnet), a[0], a[1], a[2])
		var fe *FieldError
		if !errors.As(err, &fe) {
			t.Errorf("%+v: want FieldError, got %v", c, err)
			continue
		}
		if fe.Field != c.field {
			t.Errorf("%+v: field %q, want %q (%v)", c, fe.Field, c.field, err)
		}
	}
	if _, err := NewRange(netip.Prefix{}, netip.Addr{}, netip.Addr{}, netip.Addr{}); err == nil {
		t.Error("invalid subnet accepted")
	}
}

func TestNextSequentialSkipsGatewayNetworkBroadcast(t *testing.T) {
	set := RangeSet{mustRange(t, "10.0.0.0/29", "", "", "")} // .1-.6, gw .1
	u := used{}
	var got []string
	last := netip.Addr{}
	for {
		a, err := set.Next(last, u.has)
		if errors.Is(err, ErrExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		u[a] = true
		last = a
		got = append(got, a.String())
	}
	want := []string{"10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
}

func TestNextGatewayInsideRangeEnd(t *testing.T) {
	// Gateway in the middle of the range is skipped; explicit start at the
	// network's first host still never yields the network address.
	set := RangeSet{mustRange(t, "192.168.1.0/24", "192.168.1.1", "192.168.1.5", "192.168.1.3")}
	u := used{}
	last := netip.Addr{}
	var got []string
	for {
		a, err := set.Next(last, u.has)
		if err != nil {
			break
		}
		u[a], last = true, a
		got = append(got, a.String())
	}
	if want := "[192.168.1.1 192.168.1.2 192.168.1.4 192.168.1.5]"; sprint(got) != want {
		t.Fatalf("got %s, want %s", sprint(got), want)
	}
}

func sprint(s []string) string {
	out := "["
	for i, x := range s {
		if i > 0 {
			out += " "
		}
		out += x
	}
	return out + "]"
}

func TestNextWrapsAroundAfterLast(t *testing.T) {
	set := RangeSet{mustRange(t, "10.0.0.0/24", "10.0.0.10", "10.0.0.20", "")}
	u := used{}.add("10.0.0.11")
	// After the last reserved .19 comes .20, then wrap to .10.
	a, err := set.Next(netip.MustParseAddr("10.0.0.19"), u.has)
	if err != nil || a.String() != "10.0.0.20" {
		t.Fatalf("got %v %v, want 10.0.0.20", a, err)
	}
	a, err = set.Next(netip.MustParseAddr("10.0.0.20"), u.has)
	if err != nil || a.String() != "10.0.0.10" {
		t.Fatalf("wrap: got %v %v, want 10.0.0.10", a, err)
	}
	u.add("10.0.0.10")
	a, err = set.Next(netip.MustParseAddr("10.0.0.20"), u.has)
	if err != nil || a.String() != "10.0.0.12" {
		t.Fatalf("wrap past used: got %v %v, want 10.0.0.12", a, err)
	}
	// A last address outside the set starts at the beginning.
	a, err = set.Next(netip.MustParseAddr("10.9.9.9"), u.has)
	if err != nil || a.String() != "10.0.0.12" {
		t.Fatalf("foreign last: got %v %v, want 10.0.0.12", a, err)
	}
	// Released addresses are not reused before the wrap: .15 freed while
	// last is .16 yields .17.
	a, err = set.Next(netip.MustParseAddr("10.0.0.16"), u.has)
	if err != nil || a.String() != "10.0.0.17" {
		t.Fatalf("got %v %v, want 10.0.0.17", a, err)
	}
}

func TestMultipleRangesInOneSet(t *testing.T) {
	set := RangeSet{
		mustRange(t, "10.0.0.0/24", "10.0.0.2", "10.0.0.3", ""),
		mustRange(t, "10.0.1.0/24", "10.0.1.2", "10.0.1.3", ""),
	}
	if err := set.Validate(); err != nil {
		t.Fatal(err)
	}
	u := used{}
	last := netip.Addr{}
	var got []string
	for i := 0; i < 4; i++ {
		a, err := set.Next(last, u.has)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		u[a], last = true, a
		got = append(got, a.String())
	}
	if want := "[10.0.0.2 10.0.0.3 10.0.1.2 10.0.1.3]"; sprint(got) != want {
		t.Fatalf("got %s want %s", sprint(got), want)
	}
	if _, err := set.Next(last, u.has); !errors.Is(err, ErrExhausted) {
		t.Fatalf("want exhausted, got %v", err)
	}
	// Free one in the first range: wrap from the end of the second range.
	delete(u, netip.MustParseAddr("10.0.0.3"))
	a, err := set.Next(last, u.has)
	if err != nil || a.String() != "10.0.0.3" {
		t.Fatalf("got %v %v, want 10.0.0.3", a, err)
	}
}

func TestExhaustionSmallAndLarge(t *testing.T) {
	set := RangeSet{mustRange(t, "10.0.0.0/30", "", "", "")} // only .2 allocatable
	a, err := set.Next(netip.Addr{}, used{}.has)
	if err != nil || a.String() != "10.0.0.2" {
		t.Fatalf("got %v %v", a, err)
	}
	if _, err := set.Next(a, used{}.add("10.0.0.2").has); !errors.Is(err, ErrExhausted) {
		t.Fatalf("want ErrExhausted, got %v", err)
	}
	// A huge IPv6 range finds a free address quickly even with many in use.
	big := RangeSet{mustRange(t, "fd00::/64", "", "", "")}
	u := used{}
	last := netip.Addr{}
	for i := 0; i < 1000; i++ {
		a, err := big.Next(last, u.has)
		if err != nil {
			t.Fatal(err)
		}
		if u[a] || a == big[0].Gateway || a == big[0].Subnet.Addr() {
			t.Fatalf("bad address %s", a)
		}
		u[a], last = true, a
	}
}

func TestCheckRequested(t *testing.T) {
	set := RangeSet{mustRange(t, "10.0.0.0/24", "10.0.0.10", "10.0.0.20", "10.0.0.15")}
	u := used{}.add("10.0.0.12")
	cases := map[string]error{
		"10.0.0.11": nil,
		"10.0.0.12": ErrInUse,
		"10.0.0.15": ErrReservedAddr,
		"10.0.0.9":  ErrOutOfRange,
		"10.0.0.21": ErrOutOfRange,
		"10.0.1.11": ErrOutOfRange,
		"fd00::11":  ErrOutOfRange,
	}
	for ip, want := range cases {
		err := set.CheckRequested(netip.MustParseAddr(ip), u.has)
		if want == nil && err != nil || want != nil && !errors.Is(err, want) {
			t.Errorf("%s: got %v, want %v", ip, err, want)
		}
	}
	// A raw Range built without NewRange still never yields network or
	// broadcast addresses.
	raw := RangeSet{{Subnet: netip.MustParsePrefix("10.1.0.0/24"), Start: netip.MustParseAddr("10.1.0.0"),
		End: netip.MustParseAddr("10.1.0.255"), Gateway: netip.MustParseAddr("10.1.0.1")}}
	for _, ip := range []string{"10.1.0.0", "10.1.0.255", "10.1.0.1"} {
		if err := raw.CheckRequested(netip.MustParseAddr(ip), used{}.has); !errors.Is(err, ErrReservedAddr) {
			t.Errorf("%s: got %v, want reserved", ip, err)
		}
	}
	a, err := raw.Next(netip.MustParseAddr("10.1.0.254"), used{}.has)
	if err != nil || a.String() != "10.1.0.2" {
		t.Errorf("raw wrap: got %v %v, want 10.1.0.2", a, err)
	}
}

func TestValidateOverlapAndFamily(t *testing.T) {
	a := mustRange(t, "10.0.0.0/24", "10.0.0.10", "10.0.0.20", "")
	b := mustRange(t, "10.0.0.0/24", "10.0.0.21", "10.0.0.30", "")
	c := mustRange(t, "10.0.0.0/24", "10.0.0.20", "10.0.0.25", "")
	v6 := mustRange(t, "fd00::/64", "", "", "")
	if err := (RangeSet{a, b}).Validate(); err != nil {
		t.Errorf("adjacent ranges in one subnet rejected: %v", err)
	}
	var fe *FieldError
	if err := (RangeSet{a, b, c}).Validate(); !errors.As(err, &fe) || fe.Field != "[2]" {
		t.Errorf("overlap: got %v, want FieldError [2]", err)
	}
	if err := (RangeSet{a, v6}).Validate(); !errors.As(err, &fe) || fe.Field != "[1].subnet" {
		t.Errorf("family: got %v", err)
	}
	if err := (RangeSet{}).Validate(); err == nil {
		t.Error("empty set accepted")
	}
	if _, _, ok := (RangeSet{a}).Overlaps(RangeSet{c}); !ok {
		t.Error("Overlaps missed a shared address")
	}
	if _, _, ok := (RangeSet{a}).Overlaps(RangeSet{v6}); ok {
		t.Error("Overlaps across families")
	}
}
