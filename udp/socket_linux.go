package udp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/conn"

	"github.com/weftnet/weft/internal/uencap"
)

// Socket is the relay's own IPv4 UDP socket: recvmmsg with UDP_GRO and
// sendmmsg with UDP_SEGMENT over message headers, addresses and control
// buffers allocated once and reused, so that neither direction allocates
// or resets more than the messages it uses. wireguard-go's StdNetBind
// (the alternative, and the one for an IPv6 underlay) allocates an
// endpoint per received datagram and resets all 128 pooled messages on
// every call, which costs a 1-byte request/response more than the whole
// naive relay does (see BENCHMARKS.md). Each receive returns up to
// BatchSize datagrams; each Send puts runs of equal-sized packets into one
// UDP_SEGMENT message, up to 64 per message, the packets' own buffers as
// the message's iovecs (no copy). A segmented send the kernel refuses with
// EIO turns segmentation off for good (GSOOff).
type Socket struct {
	conn *net.UDPConn
	rc   syscall.RawConn
	gro  bool
	gso  atomic.Bool
	// rx is the receive function's state (one caller at a time).
	rx rxState
	// txMu guards tx: Send may be called from several goroutines.
	txMu sync.Mutex
	tx   txState
}

var _ conn.Bind = (*Socket)(nil)

const (
	socketBuffer = 7 << 20 // SO_RCVBUF/SO_SNDBUF, as wireguard-go uses
	batchSize    = conn.IdealBatchSize
	maxSegments  = 64 // UDP_MAX_SEGMENTS
	maxUDPv4     = 65535 - 20 - 8
	// groTrains is how many GRO trains one receive reads: at most 64
	// datagrams each, so their split fills at most batchSize buffers.
	groTrains = batchSize / maxSegments
)

// NewSocket returns a socket that Open binds on 0.0.0.0.
func NewSocket() *Socket { return &Socket{} }

// Open implements conn.Bind: it binds udp4 port and returns one receive
// function.
func (s *Socket) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return c.Control(func(fd uintptr) { uencap.SetBuffers(int(fd), socketBuffer) })
	}}
	pc, err := lc.ListenPacket(context.Background(), "udp4", ":"+strconv.Itoa(int(port)))
	if err != nil {
		return nil, 0, err
	}
	s.conn = pc.(*net.UDPConn)
	if s.rc, err = s.conn.SyscallConn(); err != nil {
		_ = s.conn.Close()
		return nil, 0, err
	}
	_ = s.rc.Control(func(fd uintptr) {
		s.gro = unix.SetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_GRO, 1) == nil
		_, err := unix.GetsockoptInt(int(fd), unix.IPPROTO_UDP, unix.UDP_SEGMENT)
		s.gso.Store(err == nil)
	})
	s.rx.init(s.gro)
	s.tx.init()
	return []conn.ReceiveFunc{s.receive}, uint16(s.conn.LocalAddr().(*net.UDPAddr).Port), nil
}

// Offloads reports whether receives are GRO-coalesced and sends
// segmented.
func (s *Socket) Offloads() (gro, gso bool) { return s.gro, s.gso.Load() }

// Close implements conn.Bind.
func (s *Socket) Close() error {
	if s.conn == nil {
		return nil
	}
	return s.conn.Close()
}

// SetMark implements conn.Bind.
func (s *Socket) SetMark(mark uint32) error {
	var serr error
	if err := s.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	return serr
}

// ParseEndpoint implements conn.Bind; only IPv4 endpoints are valid.
func (s *Socket) ParseEndpoint(a string) (conn.Endpoint, error) {
	ap, err := netip.ParseAddrPort(a)
	if err != nil {
		return nil, err
	}
	if !ap.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("%s: the udp socket is IPv4 only: %w", a, syscall.EAFNOSUPPORT)
	}
	return &conn.StdNetEndpoint{AddrPort: netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())}, nil
}

// BatchSize implements conn.Bind.
func (s *Socket) BatchSize() int { return batchSize }

type rxState struct {
	*uencap.MsgBatch
	names  []unix.RawSockaddrInet4
	oob    []byte
	eps    []conn.StdNetEndpoint
	trains [][]byte // GRO: what the kernel fills, split into the caller's buffers
	got    int
}

var groSpace = unix.CmsgSpace(4)

func (r *rxState) init(gro bool) {
	r.MsgBatch = uencap.NewMsgBatch(batchSize)
	r.names, r.eps = make([]unix.RawSockaddrInet4, batchSize), make([]conn.StdNetEndpoint, batchSize)
	r.oob = make([]byte, batchSize*groSpace)
	if gro {
		for range groTrains {
			r.trains = append(r.trains, make([]byte, 65535))
		}
	}
}

// receive is the conn.ReceiveFunc.
func (s *Socket) receive(bufs [][]byte, sizes []int, eps []conn.Endpoint) (int, error) {
	r := &s.rx
	targets := bufs
	if s.gro {
		targets = r.trains
	}
	want := min(len(targets), batchSize)
	for i := range want {
		r.Iovs[i] = unix.Iovec{Base: &targets[i][0]}
		r.Iovs[i].SetLen(len(targets[i]))
		h := &r.Hdrs[i].Hdr
		*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&r.names[i])), Namelen: unix.SizeofSockaddrInet4,
			Iov: &r.Iovs[i], Control: &r.oob[i*groSpace]}
		h.SetIovlen(1)
		h.SetControllen(groSpace)
	}
	var err error
	if r.got, err = r.Recv(s.rc, want); err != nil {
		return 0, err
	}
	if !s.gro {
		for i := range r.got {
			sizes[i] = int(r.Hdrs[i].N)
			eps[i] = r.endpoint(i, i)
		}
		return r.got, nil
	}
	return r.split(bufs, sizes, eps), nil
}

// endpoint fills the reused endpoint slot k with message i's sender.
func (r *rxState) endpoint(k, i int) conn.Endpoint {
	sa := &r.names[i]
	port := binary.BigEndian.Uint16((*[2]byte)(unsafe.Pointer(&sa.Port))[:])
	r.eps[k].AddrPort = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
	return &r.eps[k]
}

// split copies every GRO train into the caller's buffers, one datagram
// each.
func (r *rxState) split(bufs [][]byte, sizes []int, eps []conn.Endpoint) int {
	k := 0
	for i := range r.got {
		h := &r.Hdrs[i]
		data := r.trains[i][:h.N]
		seg := groSize(r.oob[i*groSpace : i*groSpace+int(h.Hdr.Controllen)])
		if seg <= 0 {
			seg = len(data)
		}
		for len(data) > 0 && k < len(bufs) {
			n := min(seg, len(data))
			sizes[k] = copy(bufs[k], data[:n])
			eps[k] = r.endpoint(k, i)
			data = data[n:]
			k++
		}
	}
	return k
}

// groSize returns the segment size of a UDP_GRO control message, 0 if
// there is none.
func groSize(oob []byte) int {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.CmsgLen(0) || l > len(oob) {
			return 0
		}
		if h.Level == unix.IPPROTO_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4) {
			return int(binary.NativeEndian.Uint32(oob[unix.CmsgLen(0):]))
		}
		oob = oob[min(unix.CmsgSpace(l-unix.CmsgLen(0)), len(oob)):]
	}
	return 0
}

type txState struct {
	*uencap.MsgBatch
	oob  []byte
	name unix.RawSockaddrInet4
	n    int // messages built
}

var segSpace = unix.CmsgSpace(2)

func (t *txState) init() {
	t.MsgBatch = uencap.NewMsgBatch(batchSize)
	t.oob = make([]byte, batchSize*segSpace)
}

// build lays bufs out as messages to t.name: with gso, each run of equal
// sizes (the last one may be shorter) is one UDP_SEGMENT message.
func (t *txState) build(bufs [][]byte, gso bool) {
	t.n = 0
	for i := 0; i < len(bufs); {
		size, j, total := len(bufs[i]), i+1, len(bufs[i])
		for gso && j < len(bufs) && j-i < maxSegments && len(bufs[j]) <= size && total+len(bufs[j]) <= maxUDPv4 {
			total += len(bufs[j])
			j++
			if len(bufs[j-1]) < size {
				break
			}
		}
		for k := i; k < j; k++ {
			t.Iovs[k] = unix.Iovec{Base: &bufs[k][0]}
			t.Iovs[k].SetLen(len(bufs[k]))
		}
		h := &t.Hdrs[t.n].Hdr
		*h = unix.Msghdr{Name: (*byte)(unsafe.Pointer(&t.name)), Namelen: unix.SizeofSockaddrInet4, Iov: &t.Iovs[i]}
		h.SetIovlen(j - i)
		if j-i > 1 {
			c := t.oob[t.n*segSpace : (t.n+1)*segSpace]
			ch := (*unix.Cmsghdr)(unsafe.Pointer(&c[0]))
			ch.Level, ch.Type = unix.IPPROTO_UDP, unix.UDP_SEGMENT
			ch.SetLen(unix.CmsgLen(2))
			binary.NativeEndian.PutUint16(c[unix.CmsgLen(0):], uint16(size))
			h.Control = &c[0]
			h.SetControllen(segSpace)
		}
		t.n++
		i = j
	}
}

// Send implements conn.Bind. Empty buffers are skipped.
func (s *Socket) Send(bufs [][]byte, ep conn.Endpoint) error {
	e, ok := ep.(*conn.StdNetEndpoint)
	if !ok || !e.Addr().Is4() {
		return fmt.Errorf("udp socket: %v: %w", ep, syscall.EAFNOSUPPORT)
	}
	for _, b := range bufs {
		if len(b) == 0 {
			return errors.New("udp socket: empty datagram")
		}
	}
	if len(bufs) > batchSize {
		return fmt.Errorf("udp socket: %d datagrams, at most %d per send", len(bufs), batchSize)
	}
	s.txMu.Lock()
	defer s.txMu.Unlock()
	t := &s.tx
	t.name.Family, t.name.Addr = unix.AF_INET, e.Addr().As4()
	binary.BigEndian.PutUint16((*[2]byte)(unsafe.Pointer(&t.name.Port))[:], e.Port())
	gso := s.gso.Load()
	t.build(bufs, gso)
	err := s.sendAll()
	if errors.Is(err, unix.EIO) && gso {
		s.gso.Store(false)
		t.build(bufs, false)
		return conn.ErrUDPGSODisabled{RetryErr: s.sendAll()}
	}
	return err
}

func (s *Socket) sendAll() error {
	t := &s.tx
	for start := 0; start < t.n; {
		sent, err := t.Send(s.rc, start, t.n)
		if err != nil {
			return err
		}
		if sent <= 0 {
			return errors.New("udp socket: sendmmsg sent nothing")
		}
		start += sent
	}
	return nil
}
