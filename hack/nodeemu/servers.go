package nodeemu

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"sync"

	"github.com/containernetworking/plugins/pkg/ns"
	v1 "k8s.io/api/core/v1"
)

// serverSet is what a pod "runs": one tiny server per declared container
// port, each answering with the pod's name so probes can tell who answered.
type serverSet struct {
	closers []io.Closer
	wg      sync.WaitGroup
	// Skipped lists ports that could not be served (SCTP: no kernel support).
	Skipped []string
}

type portKey struct {
	port  int32
	proto v1.Protocol
}

// startServers opens the listening sockets inside the pod's netns (they stay
// there) and serves them from goroutines of this process.
func startServers(ctx context.Context, log *slog.Logger, netnsPath, podName string, pod *v1.Pod) (*serverSet, error) {
	s := &serverSet{}
	seen := map[portKey]bool{}
	reply := []byte(podName + "\n")
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			proto := p.Protocol
			if proto == "" {
				proto = v1.ProtocolTCP
			}
			k := portKey{p.ContainerPort, proto}
			if seen[k] {
				continue
			}
			seen[k] = true
			addr := ":" + strconv.Itoa(int(p.ContainerPort))
			switch proto {
			case v1.ProtocolTCP:
				var ln net.Listener
				err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
					var err error
					ln, err = net.Listen("tcp", addr)
					return err
				})
				if err != nil {
					s.Close()
					return nil, fmt.Errorf("listen tcp %s in %s: %w", addr, netnsPath, err)
				}
				s.closers = append(s.closers, ln)
				s.wg.Add(1)
				go func() { defer s.wg.Done(); serveTCP(ln, reply) }()
			case v1.ProtocolUDP:
				var pc net.PacketConn
				err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
					var err error
					pc, err = net.ListenPacket("udp", addr)
					return err
				})
				if err != nil {
					s.Close()
					return nil, fmt.Errorf("listen udp %s in %s: %w", addr, netnsPath, err)
				}
				s.closers = append(s.closers, pc)
				s.wg.Add(1)
				go func() { defer s.wg.Done(); serveUDP(pc, reply) }()
			default:
				s.Skipped = append(s.Skipped, fmt.Sprintf("%d/%s", p.ContainerPort, proto))
				log.InfoContext(ctx, "container port not served: no kernel support for protocol",
					"pod", pod.Namespace+"/"+pod.Name, "port", p.ContainerPort, "protocol", proto)
			}
		}
	}
	return s, nil
}

func serveTCP(ln net.Listener, reply []byte) {
	for {
		conn, err := ln.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return
		}
		go func() {
			defer conn.Close()
			_, _ = conn.Write(reply)
		}()
	}
}

func serveUDP(pc net.PacketConn, reply []byte) {
	buf := make([]byte, 64*1024)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = pc.WriteTo(reply, from)
	}
}

// Close stops every server and waits for its goroutine.
func (s *serverSet) Close() {
	if s == nil {
		return
	}
	for _, c := range s.closers {
		_ = c.Close()
	}
	s.wg.Wait()
	s.closers = nil
}
