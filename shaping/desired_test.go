package shaping

import (
	"math"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestParseQuantity(t *testing.T) {
	good := map[string]uint64{"10M": 10_000_000, "1.5G": 1_500_000_000, "500Ki": 512_000, "1e7": 10_000_000,
		"100k": 100_000, "2500": 2500, " 1Gi ": 1 << 30, "0.5k": 500, "007M": 7_000_000, "+10M": 10_000_000,
		"9223372036854775807": math.MaxInt64, "8191Pi": 8191 << 50}
	for in, want := range good {
		got, err := ParseQuantity(in)
		if err != nil || got != want {
			t.Errorf("ParseQuantity(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := map[string]string{"0": "zero", "-5M": "negative", "abc": "not a quantity", "10X": "unknown suffix",
		"": "empty", "99999999P": "too large", "0M": "zero",
		"9223372036854775808": "too large", "8192Pi": "too large", "18446744073709551616": "too large",
		"99999999999999999999M": "too large", "000": "zero"}
	for in, want := range bad {
		if _, err := ParseQuantity(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseQuantity(%q) = %v; want an error saying %q", in, err, want)
		}
	}
}

func TestRequestsNameTheAnnotation(t *testing.T) {
	c := DefaultConfig()
	c.IngressCeiling, c.EgressCeiling = 100_000_000, 50_000_000
	for _, tc := range []struct {
		ann  map[string]string
		want string
	}{
		{map[string]string{AnnotationEgress: "ten"}, AnnotationEgress + `="ten": "ten": not a quantity`},
		{map[string]string{AnnotationIngress: "0"}, AnnotationIngress + `="0": "0": zero`},
		{map[string]string{AnnotationIngress: "-10M"}, AnnotationIngress + `="-10M": "-10M": negative`},
		{map[string]string{AnnotationEgress: "60M"}, "annotation " + AnnotationEgress + ": 60Mbit/s is above the node's egress ceiling 50Mbit/s"},
	} {
		_, err := c.Requests(tc.ann, [2]uint64{})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: err %v, want it to contain %q", tc.ann, err, tc.want)
		}
	}
	got, err := c.Requests(map[string]string{AnnotationEgress: "10M", AnnotationIngress: "60M", "other": "x"}, [2]uint64{Egress: math.MaxUint32})
	if err != nil || got[Egress] != (Request{Rate: 10e6, Burst: math.MaxUint32}) || got[Ingress].Rate != 60e6 {
		t.Fatalf("valid annotations: %+v, %v", got, err)
	}
}

func TestConfigDecode(t *testing.T) {
	c, err := ParseConfig([]byte(`{"ingressCeiling":"1G","egressCeiling":"500M","podCeil":"200M","maxBurst":"32Ki","targetDelay":"2ms"}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{IngressCeiling: 1e9, EgressCeiling: 500e6, PodCeil: 200e6, MaxBurst: 32 << 10, TargetDelay: 2 * time.Millisecond}
	if c != want {
		t.Fatalf("got %+v want %+v", c, want)
	}
	if c, err := ParseConfig([]byte(`{}`)); err != nil || c != DefaultConfig() {
		t.Fatalf("{}: %+v %v", c, err)
	}
	for in, field := range map[string]string{
		`{"podceil":"1G"}`:             "unknown field",
		`{"podCeil":"20G"}`:            "bandwidth.podCeil",
		`{"maxBurst":"100"}`:           "bandwidth.maxBurst",
		`{"targetDelay":"5"}`:          "bandwidth.targetDelay",
		`{"egressCeiling":"-1G"}`:      "bandwidth.egressCeiling",
		`{"ingressCeiling":"1G"} {}`:   "trailing",
		`{"ingressCeiling":"fast"}`:    "bandwidth.ingressCeiling",
		`{"targetDelay":"10s"}`:        "between 100us and 1s",
		`{"maxBurst":"64Ki","x":true}`: "unknown field",
	} {
		if _, err := ParseConfig([]byte(in)); err == nil || !strings.Contains(err.Error(), field) {
			t.Errorf("%s: err %v, want %q", in, err, field)
		}
	}
}

// The tree for two pods: rates and ceilings in bytes, the runtime's huge
// burst bounded by MaxBurst, quantum proportional to rate from one frame
// for the smallest class, queues sized to TargetDelay at ceil.
func TestComputeTree(t *testing.T) {
	c := DefaultConfig()
	c.EgressCeiling, c.IngressCeiling, c.PodCeil = 1e9, 1e9, 50e6
	a := netip.MustParseAddr("10.1.0.5")
	b := netip.MustParseAddr("10.1.0.6")
	pods := []Pod{
		{Veth: "wvb", Addrs: []netip.Addr{b}, Dir: [2]Request{Egress: {Rate: 100e6}}},
		{Veth: "wva", Addrs: []netip.Addr{a}, Dir: [2]Request{Egress: {Rate: 10e6, Burst: math.MaxUint32}, Ingress: {Rate: 10e6}}},
	}
	d, minors := Compute(c, 1500, pods, nil)
	eg := d.Trees[Egress]
	if eg.Ceiling != 125e6 || eg.R2Q != 1250000/minQuantum || eg.Segment != 2*(1500+18) {
		t.Fatalf("egress tree %+v", eg)
	}
	ca, cb := eg.Class("wva"), eg.Class("wvb")
	if ca == nil || cb == nil || len(eg.Classes) != 2 {
		t.Fatalf("classes %+v", eg.Classes)
	}
	if ca.Rate != 1_250_000 || ca.Ceil != 6_250_000 || ca.Burst != DefaultMaxBurst || ca.Cburst != 16<<10 {
		t.Errorf("class a %+v: rate 10M ceil podCeil 50M, burst bounded by maxBurst", ca)
	}
	// 5 ms at 50 Mbit/s = 31250 bytes: 20 whole frames of 1514 and 512.
	if ca.Queue != 20*1514+512 || ca.Quantum != 1250000/eg.R2Q || cb.Quantum != 12_500_000/eg.R2Q || ca.Quantum < minQuantum {
		t.Errorf("queue %d quantum a %d b %d (r2q %d)", ca.Queue, ca.Quantum, cb.Quantum, eg.R2Q)
	}
	// A pod rate above podCeil keeps ceil = rate.
	if cb.Ceil != cb.Rate {
		t.Errorf("class b ceil %d below its rate %d", cb.Ceil, cb.Rate)
	}
	// 16 KiB (the floor) when the runtime gives no burst.
	if cb.Burst != 16<<10 {
		t.Errorf("default burst %d", cb.Burst)
	}
	if in := d.Trees[Ingress]; len(in.Classes) != 1 || in.Classes[0].Veth != "wva" || in.Classes[0].Minor != ca.Minor {
		t.Errorf("ingress tree %+v: only a, same minor", in.Classes)
	}
	if len(d.Redirects) != 2 || d.Redirects[0] != (Redirect{Veth: "wva", Dir: [2]bool{true, true}}) || d.Redirects[1] != (Redirect{Veth: "wvb", Dir: [2]bool{true, false}}) {
		t.Errorf("redirects %+v", d.Redirects)
	}
	// Numbers stay when pods come and go.
	pods = append(pods[:1], Pod{Veth: "wvc", Addrs: []netip.Addr{a}, Dir: [2]Request{Ingress: {Rate: 1e6}}})
	_, again := Compute(c, 1500, pods, minors)
	if again["wvb"] != minors["wvb"] || again["wvc"] == again["wvb"] || again["wvc"] <= rootClass || again["wvc"] > maxMinor {
		t.Errorf("minors %v then %v", minors, again)
	}
}

func TestQuantumAndQueueBounds(t *testing.T) {
	c := DefaultConfig()
	c.PodCeil = 1e6
	pods := []Pod{
		{Veth: "wv1", Dir: [2]Request{Egress: {Rate: 8000}}},           // 1000 B/s
		{Veth: "wv2", Dir: [2]Request{Egress: {Rate: 10_000_000_000}}}, // the ceiling
	}
	d, _ := Compute(c, 1450, pods, nil)
	small, big := d.Trees[Egress].Class("wv1"), d.Trees[Egress].Class("wv2")
	if small.Quantum != minQuantum || big.Quantum != maxQuantum {
		t.Errorf("quantum small %d big %d: want %d and %d (no kernel warning either way)", small.Quantum, big.Quantum, minQuantum, maxQuantum)
	}
	// Queue at least eight frames, however small delay × ceil.
	if small.Queue != minQueueFrames*(1450+ethHeader)+smallRoom {
		t.Errorf("queue %d, want eight frames of %d and %d", small.Queue, 1450+ethHeader, smallRoom)
	}
	if want := 10_000_000_000 / 8 * 5 / 1000 / 1464 * 1464; big.Queue != uint32(want+smallRoom) {
		t.Errorf("queue at 10G: %d, want 5 ms", big.Queue)
	}
	if small.Burst < minBurst {
		t.Errorf("burst %d below two frames", small.Burst)
	}
}
