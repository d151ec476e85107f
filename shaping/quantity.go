// Package shaping owns pod bandwidth on a node: the pods' bandwidth
// annotations (kubernetes.io/ingress-bandwidth, kubernetes.io/egress-bandwidth)
// become one HTB tree per direction, converged in one Apply. Each direction
// has its own IFB device: every shaped pod's host veth redirects its
// traffic there (clsact + mirred: the veth's ingress, what the pod sends,
// to weft.ifb.out; its egress, what the pod receives, to weft.ifb.in), and
// the device's HTB root classifies by pod address into one class per pod
// (rate = the annotation, ceil = the node ceiling or the configured per-pod
// maximum, borrowing from siblings). The desired tree is computed purely
// (desired.go) and converged by a Kernel (netlink, or a fake); the
// Reconciler joins the endpoint records, live Pod annotations and the
// plugin's ADD-time request.
package shaping

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"math/bits"
	"strconv"
	"strings"
)

// The pod annotations Kubernetes defines for pod bandwidth (bits per
// second, resource.Quantity syntax).
const (
	AnnotationIngress = "kubernetes.io/ingress-bandwidth"
	AnnotationEgress  = "kubernetes.io/egress-bandwidth"
)

// suffixes of a Kubernetes quantity that a bandwidth may carry.
var suffixes = map[string]*big.Rat{
	"":   big.NewRat(1, 1),
	"k":  big.NewRat(1e3, 1),
	"M":  big.NewRat(1e6, 1),
	"G":  big.NewRat(1e9, 1),
	"T":  big.NewRat(1e12, 1),
	"P":  big.NewRat(1e15, 1),
	"Ki": big.NewRat(1<<10, 1),
	"Mi": big.NewRat(1<<20, 1),
	"Gi": big.NewRat(1<<30, 1),
	"Ti": big.NewRat(1<<40, 1),
	"Pi": big.NewRat(1<<50, 1),
}

// ParseQuantity parses a Kubernetes quantity ("10M", "1.5G", "500Ki",
// "1e7"): bits per second for a rate, bytes for a burst. Zero, negative
// and values beyond 2^63 are errors; a fraction is rounded up.
func ParseQuantity(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	if t == "" {
		return 0, errors.New("empty")
	}
	num, suf := splitSuffix(t)
	if num == "" || num == "-" || num == "+" {
		return 0, fmt.Errorf("%q: not a quantity", s)
	}
	mult, ok := suffixes[suf]
	if !ok {
		return 0, fmt.Errorf("%q: unknown suffix %q (use k, M, G, T, P or Ki, Mi, Gi, Ti, Pi)", s, suf)
	}
	if v, ok := wholeNumber(num); ok {
		// The common case ("10M"): no big.Rat. Every ADD and every sync
		// parses each shaped pod's annotations.
		hi, lo := bits.Mul64(v, mult.Num().Uint64())
		switch {
		case v == 0:
			return 0, fmt.Errorf("%q: zero", s)
		case hi != 0 || lo > math.MaxInt64:
			return 0, fmt.Errorf("%q: too large", s)
		}
		return lo, nil
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%q: not a quantity", s)
	}
	r.Mul(r, mult)
	if r.Sign() < 0 {
		return 0, fmt.Errorf("%q: negative", s)
	}
	if r.Sign() == 0 {
		return 0, fmt.Errorf("%q: zero", s)
	}
	if !r.IsInt() {
		// Kubernetes rounds a quantity up to a whole unit.
		r.SetInt(new(big.Int).Add(new(big.Int).Quo(r.Num(), r.Denom()), big.NewInt(1)))
	}
	if !r.Num().IsUint64() || r.Num().Uint64() > math.MaxInt64 {
		return 0, fmt.Errorf("%q: too large", s)
	}
	return r.Num().Uint64(), nil
}

// wholeNumber reads digits only ("10", not "+10", "1.5" or "1e7").
func wholeNumber(num string) (uint64, bool) {
	if len(num) > 19 { // more than MaxInt64 has: leave it to big.Rat
		return 0, false
	}
	for i := 0; i < len(num); i++ {
		if num[i] < '0' || num[i] > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(num, 10, 64)
	return v, err == nil
}

// splitSuffix splits "10Mi" into "10" and "Mi". An exponent ("1e7",
// "2.5E6") stays with the number.
func splitSuffix(s string) (string, string) {
	i := len(s)
	for i > 0 && isLetter(s[i-1]) {
		i--
	}
	return s[:i], s[i:]
}

func isLetter(c byte) bool { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') }

// FormatBits renders bits per second for messages ("10Mbit/s").
func FormatBits(b uint64) string {
	switch {
	case b >= 1e9 && b%1e6 == 0:
		return fmt.Sprintf("%gGbit/s", float64(b)/1e9)
	case b >= 1e6:
		return fmt.Sprintf("%gMbit/s", float64(b)/1e6)
	case b >= 1e3:
		return fmt.Sprintf("%gkbit/s", float64(b)/1e3)
	}
	return fmt.Sprintf("%dbit/s", b)
}
