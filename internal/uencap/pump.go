package uencap

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weftnet/weft/internal/tun"
)

// Pump runs the loops of a userspace encapsulation over its TUN device
// and counts what they move: ReadTUN hands the caller every batch read
// from the TUN, RecvLoop checks every batch received from the underlay and
// writes what passes into the TUN in one call. Run starts and stops the
// loops. The zero value with Dev set is ready; Log may be nil.
type Pump struct {
	Dev tun.Device
	Log *slog.Logger
	Counters
	// stopping is set before Run closes the device and the socket, so the
	// loops tell those closes from a device or socket that went away.
	stopping atomic.Bool
}

// ErrorPause keeps a loop that keeps failing from spinning.
const ErrorPause = 10 * time.Millisecond

// Loop is one goroutine of Run: it returns nil when Run closed what it
// reads, an error when that went away by itself.
type Loop struct {
	Name string
	Run  func() error
}

// Run runs the loops until ctx ends or one of them fails (the device or
// the socket went away; logged as stopped), then marks the pump stopping,
// calls closeAll (which must make every loop return) and waits for them.
// It returns nil when ctx ended it.
func (p *Pump) Run(ctx context.Context, stopped string, closeAll func() error, loops ...Loop) error {
	var wg sync.WaitGroup
	fail := make(chan error, len(loops))
	for _, l := range loops {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := l.Run(); err != nil {
				fail <- fmt.Errorf("%s: %w", l.Name, err)
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-fail:
		p.Logger().Error(stopped, "err", err)
	}
	p.stopping.Store(true)
	_ = closeAll()
	wg.Wait()
	return err
}

// Logger is Log, or one that discards when Log is nil.
func (p *Pump) Logger() *slog.Logger {
	if p.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return p.Log
}

// loopErr decides what a failed read means: stop quietly when Run is
// closing (whatever a closed fd returns: EBADF, "use of closed file"),
// stop with the error when the device or socket went away, else count
// it, pause briefly and go on.
func (p *Pump) loopErr(err error) (stop bool, _ error) {
	if p.stopping.Load() {
		return true, nil
	}
	if errors.Is(err, net.ErrClosed) || errors.Is(err, os.ErrClosed) {
		if p.stopping.Load() {
			return true, nil
		}
		return true, err
	}
	p.errors.Add(1)
	time.Sleep(ErrorPause)
	return false, nil
}

// Buffers returns n buffers of tun.BufSize, allocated once per loop: the
// loops reuse them for every batch (no allocation per packet).
func Buffers(n int) [][]byte {
	bufs := make([][]byte, n)
	for i := range bufs {
		bufs[i] = make([]byte, tun.BufSize)
	}
	return bufs
}

// ReadTUN reads the TUN in batches until it is closed and calls handle
// with each batch: pkts[i] is a packet, with tun.Offset bytes of its
// buffer free before it. handle counts what it sends (Tx) and drops.
func (p *Pump) ReadTUN(handle func(pkts [][]byte)) error {
	bufs := Buffers(p.Dev.BatchSize())
	sizes := make([]int, len(bufs))
	pkts := make([][]byte, len(bufs))
	for {
		n, err := p.Dev.Read(bufs, sizes)
		if err != nil {
			if stop, err := p.loopErr(err); stop {
				return err
			}
		}
		if n <= 0 {
			continue
		}
		for i := range n {
			pkts[i] = bufs[i][tun.Offset : tun.Offset+sizes[i]]
		}
		handle(pkts[:n])
	}
}

// RecvFunc receives up to len(bufs) packets from the underlay into bufs,
// blocking until there is one; sizes[i] is the length of the i-th.
type RecvFunc func(bufs [][]byte, sizes []int) (int, error)

// CheckFunc checks the i-th packet of a batch, b: the receive's bytes,
// after `at` bytes of headroom (RecvLoop). It returns where in b the inner
// packet starts (at least tun.Offset: the bytes before it become the
// TUN's headroom, no copy) and how long it is, or why it is dropped. OK
// with n == 0 skips the packet uncounted (a slot the receive left empty).
type CheckFunc func(i int, b []byte) (off, n int, r Reason)

// RecvLoop receives batches into bufs[i][at:] until the socket is closed
// and hands each to decap (Decap with the caller's check): wbufs is
// scratch for it to return for reuse.
func (p *Pump) RecvLoop(batch, at int, recv RecvFunc, decap func(bufs [][]byte, sizes []int, wbufs [][]byte) [][]byte) error {
	bufs := Buffers(batch)
	rbufs := make([][]byte, len(bufs)) // the same memory, past the headroom
	for i, b := range bufs {
		rbufs[i] = b[at:]
	}
	sizes := make([]int, len(bufs))
	wbufs := make([][]byte, 0, len(bufs))
	for {
		n, err := recv(rbufs, sizes)
		if err != nil {
			if stop, err := p.loopErr(err); stop {
				return err
			}
		}
		if n > 0 {
			wbufs = decap(bufs[:n], sizes, wbufs)
		}
	}
}

// Decap checks every packet bufs[i] (sizes[i] bytes received after `at`
// bytes of headroom) with check, counts the drops, and writes the inner
// packets that pass into the TUN in one call (Rx). wbufs is scratch,
// returned for reuse.
func (p *Pump) Decap(bufs [][]byte, sizes []int, at int, wbufs [][]byte, check CheckFunc) [][]byte {
	wbufs = wbufs[:0]
	bytes := 0
	var drops [NumReasons]uint64
	for i, b := range bufs {
		off, n, r := check(i, b[:at+sizes[i]])
		if r != OK {
			drops[r]++
			continue
		}
		if n == 0 {
			continue
		}
		wbufs = append(wbufs, b[off-tun.Offset:off+n])
		bytes += n
	}
	for r, n := range drops {
		p.Drop(Reason(r), n)
	}
	if len(wbufs) == 0 {
		return wbufs
	}
	if _, err := p.Dev.Write(wbufs); err != nil {
		p.Drop(DropTUNWrite, uint64(len(wbufs)))
		p.Logger().Debug("tun write", "err", fmt.Sprint(err))
		return wbufs
	}
	p.Rx.Batch(len(wbufs), bytes)
	return wbufs
}
