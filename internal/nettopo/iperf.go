package nettopo

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

// IPerf3 runs an iperf3 client in from, with the given number of parallel
// streams for the given seconds, against a one-off server bound to dst in
// to, and returns the received throughput in Gbit/s. Both processes stay
// inside the two namespaces; the server is killed when it returns.
func IPerf3(b testing.TB, from, to ns.NetNS, dst netip.Addr, streams, seconds int) float64 {
	b.Helper()
	return IPerf3Via(b, from, to, dst, netip.AddrPortFrom(dst, 5201), streams, seconds)
}

// IPerf3Via is IPerf3 with the server bound to bind (port dst's) and the
// client connecting to dst, e.g. a Service address that DNATs to bind;
// extra are more client options (-l 1420 -N -b 5M).
func IPerf3Via(b testing.TB, from, to ns.NetNS, bind netip.Addr, dst netip.AddrPort, streams, seconds int, extra ...string) float64 {
	b.Helper()
	port := fmt.Sprint(dst.Port())
	srv := exec.Command("nsenter", "--net="+to.Path(), "iperf3", "-s", "-1", "-B", bind.String(), "-p", port)
	if err := srv.Start(); err != nil {
		b.Fatalf("iperf3 server: %v", err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	var out []byte
	var err error
	for range 50 { // wait for the server to listen
		time.Sleep(100 * time.Millisecond)
		args := append([]string{"--net=" + from.Path(), "iperf3", "-c", dst.Addr().String(), "-p", port,
			"-t", fmt.Sprint(seconds), "-P", fmt.Sprint(streams), "-J"}, extra...)
		out, err = exec.Command("nsenter", args...).Output()
		if err == nil || !strings.Contains(string(out), "Connection refused") {
			break
		}
	}
	if err != nil {
		b.Fatalf("iperf3 client: %v\n%s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		b.Fatalf("iperf3 json: %v", err)
	}
	return res.End.SumReceived.BitsPerSecond / 1e9
}
