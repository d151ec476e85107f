package tun

import (
	"errors"
	"os"
	"sync"
)

// Fake is an in-memory Device: packets given to Inject come out of Read,
// packets given to Write are kept for Written. Reads block until a packet
// is injected or the device is closed. Safe for concurrent use.
type Fake struct {
	name  string
	mtu   int
	batch int
	in    chan []byte

	mu       sync.Mutex
	out      [][]byte
	mode     Mode
	writeErr error
	closed   chan struct{}
	once     sync.Once
}

var _ Device = (*Fake)(nil)

// NewFake returns a fake device that returns up to batch packets per Read.
func NewFake(name string, mtu, batch int) *Fake {
	return &Fake{name: name, mtu: mtu, batch: batch, in: make(chan []byte, 1024), closed: make(chan struct{})}
}

// Inject queues a packet for Read (as if the kernel routed it into the
// device). It blocks when 1024 packets are queued.
func (f *Fake) Inject(pkt []byte) {
	select {
	case f.in <- append([]byte(nil), pkt...):
	case <-f.closed:
	}
}

// Written returns copies of the packets written so far, in order.
func (f *Fake) Written() [][]byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([][]byte, len(f.out))
	for i, p := range f.out {
		out[i] = append([]byte(nil), p...)
	}
	return out
}

// SetWriteError makes every following Write fail with err (nil: succeed).
func (f *Fake) SetWriteError(err error) {
	f.mu.Lock()
	f.writeErr = err
	f.mu.Unlock()
}

// SetMode sets what Mode reports.
func (f *Fake) SetMode(m Mode) {
	f.mu.Lock()
	f.mode = m
	f.mu.Unlock()
}

// Read implements Device.
func (f *Fake) Read(bufs [][]byte, sizes []int) (int, error) {
	var p []byte
	select {
	case p = <-f.in:
	case <-f.closed:
		return 0, os.ErrClosed
	}
	n := 0
	for {
		if len(p) > len(bufs[n])-Offset {
			return n, errors.New("fake tun: packet larger than buffer")
		}
		sizes[n] = copy(bufs[n][Offset:], p)
		n++
		if n == len(bufs) || n == f.batch {
			return n, nil
		}
		select {
		case p = <-f.in:
		default:
			return n, nil
		}
	}
}

// Write implements Device.
func (f *Fake) Write(bufs [][]byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	select {
	case <-f.closed:
		return 0, os.ErrClosed
	default:
	}
	if f.writeErr != nil {
		return 0, f.writeErr
	}
	for _, b := range bufs {
		f.out = append(f.out, append([]byte(nil), b[Offset:]...))
	}
	return len(bufs), nil
}

// BatchSize implements Device.
func (f *Fake) BatchSize() int { return f.batch }

// MTU implements Device.
func (f *Fake) MTU() int { return f.mtu }

// Name implements Device.
func (f *Fake) Name() string { return f.name }

// Mode implements Device.
func (f *Fake) Mode() Mode {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.mode
}

// Close implements Device.
func (f *Fake) Close() error {
	f.once.Do(func() { close(f.closed) })
	return nil
}
