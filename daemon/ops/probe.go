package ops

import (
	"bufio"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/endpoint"
	"github.com/weftnet/weft/internal/nodeapi"
)

// probe connects from a local pod's network namespace (the path the plugin
// recorded from CNI_NETNS) to an address: weftctl connectivity's matrix,
// each probe run on the source pod's node, through the same rules as the
// pod's own traffic.
func (d Deps) probe(w http.ResponseWriter, r *http.Request) {
	if !method(w, r, http.MethodPost) {
		return
	}
	var req nodeapi.ProbeRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16)).Decode(&req); err != nil {
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	dst, err := netip.ParseAddr(req.To)
	if err != nil || req.Port == 0 || req.Proto != "tcp" && req.Proto != "udp" {
		http.Error(w, "want to (an address), port and proto tcp or udp", http.StatusBadRequest)
		return
	}
	timeout := time.Duration(req.TimeoutMS) * time.Millisecond
	if timeout <= 0 {
		timeout = time.Second
	}
	timeout = min(timeout, 10*time.Second)
	path, ok := d.podNetns(req.FromNamespace, req.FromPod)
	if !ok {
		http.Error(w, "no pod "+req.FromNamespace+"/"+req.FromPod+" with a recorded network namespace on "+d.Node, http.StatusNotFound)
		return
	}
	target := net.JoinHostPort(dst.String(), strconv.Itoa(int(req.Port)))
	var res nodeapi.ProbeResult
	err = ns.WithNetNSPath(path, func(ns.NetNS) error {
		res = probeOnce(req.Proto, target, timeout)
		return nil
	})
	if err != nil {
		http.Error(w, "enter the pod's network namespace: "+err.Error(), http.StatusInternalServerError)
		return
	}
	WriteJSON(w, res)
}

func (d Deps) podNetns(namespace, name string) (string, bool) {
	recs, _ := endpoint.List(d.EndpointDir)
	for _, e := range recs {
		if e.PodNamespace == namespace && e.PodName == name && e.Netns != "" {
			return e.Netns, true
		}
	}
	return "", false
}

// probeOnce runs inside the source namespace. TCP: the connection opening
// is an allow (a first line, if the server sends one within the timeout,
// is the reply); UDP: only a reply is an allow.
func probeOnce(proto, target string, timeout time.Duration) nodeapi.ProbeResult {
	deadline := time.Now().Add(timeout)
	conn, err := net.DialTimeout(proto, target, timeout)
	if err != nil {
		return nodeapi.ProbeResult{Reason: err.Error()}
	}
	defer conn.Close()
	_ = conn.SetDeadline(deadline)
	if proto == "udp" {
		if _, err := conn.Write([]byte("probe\n")); err != nil {
			return nodeapi.ProbeResult{Reason: err.Error()}
		}
		buf := make([]byte, 512)
		n, err := conn.Read(buf)
		if err != nil {
			return nodeapi.ProbeResult{Reason: err.Error()}
		}
		return nodeapi.ProbeResult{Allowed: true, Reply: strings.TrimSpace(string(buf[:n]))}
	}
	_ = conn.SetDeadline(time.Now().Add(min(timeout, 500*time.Millisecond)))
	line, _ := bufio.NewReader(conn).ReadString('\n')
	return nodeapi.ProbeResult{Allowed: true, Reply: strings.TrimSpace(line)}
}
