package shaping

import (
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"time"
)

// Direction is one of the two trees.
type Direction int

// The directions, named from the pod.
const (
	Egress  Direction = iota // what the pod sends
	Ingress                  // what the pod receives
)

// Devices and fixed handles of the trees.
const (
	DeviceEgress  = "weft.ifb.out"
	DeviceIngress = "weft.ifb.in"
	rootMajor     = 1
	rootClass     = 1 // 1:1 holds the node ceiling; pods are 1:2 .. 1:maxMinor
	maxMinor      = 0xfff
	frameOverhead = 18 // Ethernet header and a VLAN tag
	ethHeader     = 14
	minQuantum    = 1514
	maxQuantum    = 200000 // above it the kernel warns and clamps
	minBurst      = 2 * 1514
)

func (d Direction) String() string { return [...]string{"egress", "ingress"}[d] }

// Device is the direction's IFB.
func (d Direction) Device() string { return [...]string{DeviceEgress, DeviceIngress}[d] }

// Annotation is the direction's pod annotation.
func (d Direction) Annotation() string { return [...]string{AnnotationEgress, AnnotationIngress}[d] }

// Request is what a pod asks for in one direction.
type Request struct {
	Rate  uint64 // bits/s; 0 = not shaped
	Burst uint64 // bits asked by the runtime; 0 = none given
}

// Pod is one shaped attachment.
type Pod struct {
	Veth  string
	Addrs []netip.Addr
	Dir   [2]Request
}

// Class is one pod's class in one tree. Rates are bytes per second.
type Class struct {
	Minor         uint16
	Veth          string
	Addrs         []netip.Addr
	Rate, Ceil    uint64
	Burst, Cburst uint32 // bytes
	Quantum       uint32 // bytes
	Queue         uint32 // leaf queue limit, bytes
}

// Tree is one direction's HTB tree.
type Tree struct {
	Dir     Direction
	Ceiling uint64 // bytes/s, class 1:1
	R2Q     uint32
	Segment uint32 // leaf segmentation threshold, bytes (two frames)
	Classes []Class
}

// Redirect is what a shaped veth sends to the trees.
type Redirect struct {
	Veth string
	Dir  [2]bool
}

// Desired is the node's whole shaping state.
type Desired struct {
	Trees     [2]Tree
	Redirects []Redirect
	// Off removes the trees, their devices and every redirect.
	Off bool
}

// Check validates a pod's request against the configuration; the error
// names the annotation.
func (c Config) Check(d Direction, r Request) error {
	if r.Rate == 0 {
		return nil
	}
	if ceil := c.ceiling(d); r.Rate > ceil {
		return fmt.Errorf("annotation %s: %s is above the node's %s ceiling %s", d.Annotation(), FormatBits(r.Rate), d, FormatBits(ceil))
	}
	if r.Rate < 8 {
		return fmt.Errorf("annotation %s: %s is below one byte per second", d.Annotation(), FormatBits(r.Rate))
	}
	return nil
}

func (c Config) ceiling(d Direction) uint64 {
	if d == Ingress {
		return c.IngressCeiling
	}
	return c.EgressCeiling
}

// Compute is the desired state for pods (already checked), keeping the
// class numbers of prev (veth → minor) so a class never moves.
func Compute(c Config, mtu int, pods []Pod, prev map[string]uint16) (Desired, map[string]uint16) {
	pods = slices.Clone(pods)
	slices.SortFunc(pods, func(a, b Pod) int { return compareStrings(a.Veth, b.Veth) })
	minors := assignMinors(pods, prev)
	var d Desired
	for _, dir := range []Direction{Egress, Ingress} {
		d.Trees[dir] = tree(c, mtu, dir, pods, minors)
	}
	for _, p := range pods {
		r := Redirect{Veth: p.Veth, Dir: [2]bool{p.Dir[Egress].Rate > 0, p.Dir[Ingress].Rate > 0}}
		if r.Dir[Egress] || r.Dir[Ingress] {
			d.Redirects = append(d.Redirects, r)
		}
	}
	return d, minors
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// assignMinors keeps prev's numbers and gives each new pod the first free
// number from a hash of its veth, so numbers rarely depend on order.
func assignMinors(pods []Pod, prev map[string]uint16) map[string]uint16 {
	out := make(map[string]uint16, len(pods))
	used := make(map[uint16]bool, len(pods))
	for _, p := range pods {
		if m, ok := prev[p.Veth]; ok && m > rootClass && m <= maxMinor && !used[m] {
			out[p.Veth], used[m] = m, true
		}
	}
	for _, p := range pods {
		if _, ok := out[p.Veth]; ok {
			continue
		}
		h := fnv.New32a()
		_, _ = h.Write([]byte(p.Veth))
		span := uint32(maxMinor - rootClass)
		for i := uint32(0); i < span; i++ {
			m := uint16(rootClass + 1 + (h.Sum32()+i)%span)
			if !used[m] {
				out[p.Veth], used[m] = m, true
				break
			}
		}
	}
	return out
}

// tree computes one direction: quantum proportional to rate (the
// smallest class gets one frame, none more than the kernel's maximum),
// bursts bounded by MaxBurst, each leaf queue ceil × TargetDelay.
func tree(c Config, mtu int, dir Direction, pods []Pod, minors map[string]uint16) Tree {
	t := Tree{Dir: dir, Ceiling: c.ceiling(dir) / 8, Segment: uint32(2 * (mtu + frameOverhead))}
	var minRate uint64
	for _, p := range pods {
		if r := p.Dir[dir].Rate / 8; r > 0 && (minRate == 0 || r < minRate) {
			minRate = r
		}
	}
	t.R2Q = uint32(max(1, minRate/minQuantum))
	t.Classes = make([]Class, 0, len(pods))
	for _, p := range pods {
		req := p.Dir[dir]
		m, ok := minors[p.Veth]
		if req.Rate == 0 || !ok {
			continue
		}
		rate := req.Rate / 8
		ceil := max(rate, min(t.Ceiling, c.podCeil(dir)/8))
		cl := Class{Minor: m, Veth: p.Veth, Addrs: p.Addrs, Rate: rate, Ceil: ceil}
		cl.Burst = burst(rate, req.Burst/8, c.MaxBurst)
		cl.Cburst = burst(ceil, 0, c.MaxBurst)
		cl.Quantum = uint32(min(max(rate/uint64(t.R2Q), minQuantum), maxQuantum))
		cl.Queue = queueBytes(ceil, c.TargetDelay, uint32(mtu+ethHeader))
		t.Classes = append(t.Classes, cl)
	}
	slices.SortFunc(t.Classes, func(a, b Class) int { return int(a.Minor) - int(b.Minor) })
	return t
}

func (c Config) podCeil(d Direction) uint64 {
	if c.PodCeil == 0 {
		return c.ceiling(d)
	}
	return c.PodCeil
}

// burst is the bucket of a class at rate (bytes/s): what the runtime
// asked (asked, bytes; 0 = a millisecond of rate, at least 16 KiB),
// never above maxBurst nor below two frames.
func burst(rate, asked, maxBurst uint64) uint32 {
	b := asked
	if b == 0 {
		b = max(rate/1000, 16<<10)
	}
	return uint32(max(min(b, maxBurst), minBurst))
}

// minQueueFrames is the least a leaf queue holds. Without fq there is no
// TCP pacing here: a sender's window arrives as a burst at line rate, and
// a queue of two or three frames (5 ms at 10 Mbit/s) drops several per
// window; measured on this kernel, TCP then reached only 8.1-8.3 of
// 10 Mbit/s, with eight frames 9.5.
const minQueueFrames = 8

// smallRoom is what a leaf queue holds beyond its whole frames. The leaf
// is a byte FIFO fed with frames (the TBF in front splits GSO packets):
// when a bulk flow has filled it with full frames, the next full frame is
// dropped but a small packet (a request, an ACK, DNS) still fits. Without
// the room a saturating flow's own 1-byte requests were tail-dropped and
// waited for a 200 ms retransmission (p99 221 ms measured).
const smallRoom = 512

// queueBytes is a leaf's queue: delay's worth at ceil, at least
// minQueueFrames frames, as whole frames plus smallRoom.
func queueBytes(ceil uint64, delay time.Duration, frame uint32) uint32 {
	q := ceil * uint64(delay.Microseconds()) / 1e6
	q = min(max(q, minQueueFrames*uint64(frame)), 64<<20)
	return uint32(q/uint64(frame)*uint64(frame) + smallRoom)
}
