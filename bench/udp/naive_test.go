package udp

import (
	"net"
	"net/netip"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/tun"
)

// naive is the reference relay of Flannel's UDP design, kept in benchmark
// code only: the TUN without offloads (one packet per read and per write)
// and a plain UDP socket (one sendto and one recvfrom per packet, default
// buffers), one peer, no checks.
type naive struct {
	dev  *tun.Native
	pc   *net.UDPConn
	peer netip.AddrPort
	wg   sync.WaitGroup
}

func startNaive(nsPath string, n ns.NetNS, mtu int, peer netip.AddrPort) (*naive, error) {
	dev, err := tun.Open(tun.Options{Name: "weft.udp", MTU: mtu, NetNS: nsPath, NoOffload: true})
	if err != nil {
		return nil, err
	}
	r := &naive{dev: dev, peer: peer}
	if err := n.Do(func(ns.NetNS) error {
		r.pc, err = net.ListenUDP("udp4", &net.UDPAddr{Port: int(peer.Port())})
		return err
	}); err != nil {
		_ = dev.Close()
		return nil, err
	}
	r.wg.Add(2)
	go r.tx()
	go r.rx()
	return r, nil
}

func (r *naive) tx() {
	defer r.wg.Done()
	bufs, sizes := [][]byte{make([]byte, tun.BufSize)}, []int{0}
	for {
		if _, err := r.dev.Read(bufs, sizes); err != nil {
			return
		}
		_, _ = r.pc.WriteToUDPAddrPort(bufs[0][tun.Offset:tun.Offset+sizes[0]], r.peer)
	}
}

func (r *naive) rx() {
	defer r.wg.Done()
	buf := make([]byte, tun.BufSize)
	for {
		n, _, err := r.pc.ReadFromUDPAddrPort(buf[tun.Offset:])
		if err != nil {
			return
		}
		_, _ = r.dev.Write([][]byte{buf[:tun.Offset+n]})
	}
}

func (r *naive) stop() {
	_ = r.pc.Close()
	_ = r.dev.Close()
	r.wg.Wait()
}
