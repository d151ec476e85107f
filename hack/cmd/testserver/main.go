// Command testserver is the program behind the local cluster's test image
// weft.dev/testserver (the node emulator runs it inside the pod's network
// namespace, with the pod's /etc/resolv.conf):
//
//	testserver serve --name NAME [--tcp 80,81] [--udp 80] [--ctl 127.0.0.1:7070]
//	testserver ask ADDR resolve NAME | dial tcp|udp HOST:PORT
//
// serve answers every TCP connection and UDP datagram with one line,
// "NAME from=IP:PORT" (the client address as the pod sees it, so a test
// can tell whether a Service kept or replaced it). The control port takes
// one command per connection, run by the server with the pod's own
// resolver and network: "resolve NAME" answers "ok IP,IP..." and
// "dial PROTO HOST:PORT" answers "ok <the peer's line>" (or "err ...").
// ask sends one such command and prints the answer; it exits 1 on "err".
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "testserver:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 {
		return errors.New("usage: testserver serve|ask ...")
	}
	switch args[0] {
	case "serve":
		return serve(args[1:])
	case "ask":
		if len(args) < 3 {
			return errors.New("usage: testserver ask ADDR COMMAND...")
		}
		answer, err := ask(args[1], strings.Join(args[2:], " "), 10*time.Second)
		if err != nil {
			return err
		}
		fmt.Println(answer)
		if strings.HasPrefix(answer, "err") {
			os.Exit(1)
		}
		return nil
	}
	return fmt.Errorf("unknown command %q", args[0])
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	name := fs.String("name", "", "name to answer with (default: $POD_NAME, else the hostname)")
	tcp := fs.String("tcp", "", "comma-separated TCP ports")
	udp := fs.String("udp", "", "comma-separated UDP ports")
	ctl := fs.String("ctl", "127.0.0.1:7070", "control address (resolve, dial); empty: none")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *name == "" {
		*name = os.Getenv("POD_NAME")
	}
	if *name == "" {
		*name, _ = os.Hostname()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	for _, p := range ports(*tcp) {
		ln, err := net.Listen("tcp", ":"+p)
		if err != nil {
			return err
		}
		go acceptLoop(ln, func(c net.Conn) { fmt.Fprintf(c, "%s from=%s\n", *name, c.RemoteAddr()) })
	}
	for _, p := range ports(*udp) {
		pc, err := net.ListenPacket("udp", ":"+p)
		if err != nil {
			return err
		}
		go echoUDP(pc, *name)
	}
	if *ctl != "" {
		ln, err := net.Listen("tcp", *ctl)
		if err != nil {
			return err
		}
		go acceptLoop(ln, control)
	}
	fmt.Fprintf(os.Stderr, "testserver %s: serving tcp [%s] udp [%s] ctl %s\n", *name, *tcp, *udp, *ctl)
	<-ctx.Done()
	return nil
}

func ports(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func acceptLoop(ln net.Listener, handle func(net.Conn)) {
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		go func() {
			defer c.Close()
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			handle(c)
		}()
	}
}

func echoUDP(pc net.PacketConn, name string) {
	buf := make([]byte, 64<<10)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		_, _ = pc.WriteTo([]byte(fmt.Sprintf("%s from=%s\n", name, from)), from)
	}
}

// control runs one command with this process's resolver and network.
func control(c net.Conn) {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil && line == "" {
		return
	}
	f := strings.Fields(line)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Second)
	defer cancel()
	switch {
	case len(f) == 2 && f[0] == "resolve":
		addrs, err := net.DefaultResolver.LookupHost(ctx, f[1])
		if err != nil {
			fmt.Fprintf(c, "err %v\n", err)
			return
		}
		fmt.Fprintf(c, "ok %s\n", strings.Join(addrs, ","))
	case len(f) == 3 && f[0] == "dial" && (f[1] == "tcp" || f[1] == "udp"):
		reply, err := dial(ctx, f[1], f[2])
		if err != nil {
			fmt.Fprintf(c, "err %v\n", err)
			return
		}
		fmt.Fprintf(c, "ok %s\n", reply)
	default:
		fmt.Fprintf(c, "err unknown command %q\n", strings.TrimSpace(line))
	}
}

// dial connects (resolving the name like any program in the pod) and
// returns the peer's first line.
func dial(ctx context.Context, proto, addr string) (string, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, proto, addr)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(3 * time.Second))
	if proto == "udp" {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return "", err
		}
	}
	buf := make([]byte, 512)
	n, err := conn.Read(buf)
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(buf[:n])), nil
}

// ask sends one control command and returns the answer line.
func ask(addr, command string, timeout time.Duration) (string, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintln(conn, command); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return "", err
	}
	return strings.TrimSpace(line), nil
}
