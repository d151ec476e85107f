package shaping

import "context"

// Kernel converges the node's qdiscs, classes and filters to a desired
// state in one call, reading the kernel back each time (so the same call
// repairs drift). It owns the two IFB devices, the HTB trees on them, and
// the redirect filters (prio FilterPrio) on the host veths; the trees
// classify by the pods' IPv4 and IPv6 addresses.
type Kernel interface {
	// Apply converges d; full reads everything back (resync), otherwise
	// the kernel may write only what changed since its last Apply.
	Apply(ctx context.Context, d Desired, full bool) (changes int, err error)
	// Leaf names the leaf queue the kernel offers ("fq_codel", or
	// "tbf+bfifo": a never-binding TBF that splits GSO packets in front of
	// its byte-limited FIFO).
	Leaf() string
}

// FilterPrio is the priority of the filters Weft places: the veth
// redirects and the trees' IPv4 address filters; FilterPrio6 that of the
// trees' IPv6 address filters (one u32 priority holds one protocol).
const (
	FilterPrio  = 10
	FilterPrio6 = 11
)

// Fake is a Kernel that keeps the last desired state.
type Fake struct {
	Applied  Desired
	Applies  int
	Full     int // Applies that were full
	Err      error
	LeafKind string
}

// Apply records d (or fails with f.Err, changing nothing).
func (f *Fake) Apply(_ context.Context, d Desired, full bool) (int, error) {
	if f.Err != nil {
		return 0, f.Err
	}
	f.Applies++
	if full {
		f.Full++
	}
	f.Applied = d
	return 1, nil
}

// Leaf reports f.LeafKind, "tbf+bfifo" by default.
func (f *Fake) Leaf() string {
	if f.LeafKind == "" {
		return LeafTBF
	}
	return f.LeafKind
}

// Leaf kinds.
const (
	LeafFQCodel = "fq_codel"
	LeafTBF     = "tbf+bfifo"
)

// Class returns the tree's class of veth (nil when the pod is not shaped
// in that direction).
func (t Tree) Class(veth string) *Class {
	for i := range t.Classes {
		if t.Classes[i].Veth == veth {
			return &t.Classes[i]
		}
	}
	return nil
}
