package testutil

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// SeqStream sends a sequence-numbered datagram every 2 ms (500/s) from
// one network namespace to an address in another and records when each
// was sent and received (the live backend switch's loss figures: the
// e2e test and the benchmark).
type SeqStream struct {
	Name    string
	mu      sync.Mutex
	sent    []time.Time
	recv    []time.Time
	sendErr map[int]error // seq -> the send's error (an ICMP error pending on the socket, ...)
}

// StartSeqStream listens on port in to, sends from from to dst:port until
// ctx ends; tb's cleanup closes both sockets.
func StartSeqStream(tb testing.TB, ctx context.Context, name string, from, to ns.NetNS, dst netip.Addr, port int) *SeqStream {
	tb.Helper()
	s := &SeqStream{Name: name, sendErr: map[int]error{}}
	var rx, tx *net.UDPConn
	if err := to.Do(func(ns.NetNS) (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	}); err != nil {
		tb.Fatal(err)
	}
	if err := from.Do(func(ns.NetNS) (err error) {
		tx, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(port))))
		return err
	}); err != nil {
		_ = rx.Close()
		tb.Fatal(err)
	}
	var wg sync.WaitGroup
	tb.Cleanup(func() { _ = rx.Close(); _ = tx.Close(); wg.Wait() })
	wg.Go(func() { s.receive(rx) })
	wg.Go(func() { s.send(ctx, tx) })
	return s
}

func (s *SeqStream) receive(rx *net.UDPConn) {
	buf := make([]byte, 64)
	for {
		n, err := rx.Read(buf)
		if err != nil {
			return
		}
		if n < 8 {
			continue
		}
		seq := int(binary.BigEndian.Uint64(buf))
		now := time.Now()
		s.mu.Lock()
		if seq < len(s.recv) && s.recv[seq].IsZero() {
			s.recv[seq] = now
		}
		s.mu.Unlock()
	}
}

func (s *SeqStream) send(ctx context.Context, tx *net.UDPConn) {
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	buf := make([]byte, 32)
	for seq := 0; ; seq++ {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s.mu.Lock()
		s.sent, s.recv = append(s.sent, time.Now()), append(s.recv, time.Time{})
		s.mu.Unlock()
		binary.BigEndian.PutUint64(buf, uint64(seq))
		if _, err := tx.Write(buf); err != nil { // a lost datagram
			s.mu.Lock()
			s.sendErr[seq] = err
			s.mu.Unlock()
		}
	}
}

// Window counts the datagrams sent between t0 and t1, those never
// received, and the longest time between two consecutive arrivals; it
// describes each lost one (when it was sent after t0, its send error).
func (s *SeqStream) Window(t0, t1 time.Time) (sent, lost int, gap time.Duration, why []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var last time.Time
	for i, at := range s.sent {
		if at.Before(t0) || at.After(t1) {
			continue
		}
		sent++
		r := s.recv[i]
		if r.IsZero() {
			lost++
			why = append(why, fmt.Sprintf("#%d sent at +%s (send error: %v)", i, at.Sub(t0).Round(time.Millisecond), s.sendErr[i]))
			continue
		}
		if last.IsZero() {
			last = at
		}
		gap, last = max(gap, r.Sub(last)), r
	}
	return sent, lost, gap, why
}
