package bgp

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weftnet/weft/internal/backend"
)

// The privileged tests run each speaker as a process of its own inside its
// node's network namespace, as weftd runs on a node. One process cannot
// hold several speakers in several namespaces: a socket is created in the
// namespace of the OS thread that creates it, and GoBGP creates its
// listener in its server loop and dials every peer from goroutines of its
// own, which Go schedules on any thread (a thread locked into a namespace
// does not pass it on to goroutines it starts).
const helperEnv = "WEFT_BGP_SPEAKER_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		os.Exit(runHelper(os.Stdin, os.Stdout))
	}
	os.Exit(m.Run())
}

type helperCmd struct {
	Op       string
	Config   *Config        `json:",omitempty"`
	Peers    []Peer         `json:",omitempty"`
	Prefixes []netip.Prefix `json:",omitempty"`
	Policy   *ImportPolicy  `json:",omitempty"`
	// The backend ops (see backendOp): a section, the local node, peers.
	Section json.RawMessage    `json:",omitempty"`
	Local   *backend.LocalNode `json:",omitempty"`
	Nodes   []backend.Peer     `json:",omitempty"`
}

type helperResp struct {
	Err      string
	Learned  []Route
	Rejected []Rejection
	Total    uint64
	States   []PeerState
	// Goroutines is, after a stop, how many more goroutines run than
	// before the first start.
	Goroutines int
}

// runHelper serves one speaker over JSON lines on stdin/stdout.
func runHelper(in io.Reader, out io.Writer) int {
	g := NewGoBGP(testLogger())
	base := numGoroutines()
	var hb helperBackend
	dec, enc := json.NewDecoder(in), json.NewEncoder(out)
	ctx := context.Background()
	for {
		var c helperCmd
		if err := dec.Decode(&c); err != nil {
			return 0
		}
		var r helperResp
		var err error
		switch c.Op {
		case "start":
			err = g.Start(ctx, *c.Config)
		case "peers":
			err = g.SetPeers(ctx, c.Peers)
		case "advertise":
			err = g.Advertise(ctx, c.Prefixes)
		case "policy":
			g.SetImportPolicy(*c.Policy)
		case "learned":
			r.Learned = g.Learned()
			r.Rejected, r.Total = g.Rejected()
		case "states":
			r.States, err = g.PeerStates(ctx)
		case "stop":
			err = g.Stop(ctx)
			for i := 0; i < 40 && numGoroutines() > base+1; i++ {
				time.Sleep(50 * time.Millisecond)
			}
			r.Goroutines = numGoroutines() - base
		default:
			r, err = hb.op(ctx, g, c)
		}
		if err != nil {
			r.Err = err.Error()
		}
		if enc.Encode(r) != nil {
			return 1
		}
	}
}

func numGoroutines() int { n, _ := goroutineDump(); return n }

// speakerProc is a speaker running in a helper process in a namespace.
type speakerProc struct {
	t   *testing.T
	cmd *exec.Cmd
	mu  sync.Mutex
	in  io.WriteCloser
	out *json.Decoder
}

func startSpeakerProc(t *testing.T, n ns.NetNS) *speakerProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("nsenter", "--net="+n.Path(), exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	// No Pdeathsig: it fires when the creating OS thread exits, and Go
	// ends threads that namespace helpers locked. t.Cleanup kills it.
	in, _ := cmd.StdinPipe()
	outR, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatalf("start speaker helper: %v", err)
	}
	p := &speakerProc{t: t, cmd: cmd, in: in, out: json.NewDecoder(bufio.NewReader(outR))}
	t.Cleanup(p.kill)
	return p
}

func (p *speakerProc) kill() {
	if p.cmd.ProcessState == nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
	}
}

func (p *speakerProc) call(c helperCmd) helperResp {
	p.t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := json.NewEncoder(p.in).Encode(c); err != nil {
		p.t.Fatalf("speaker helper %s: %v", c.Op, err)
	}
	var r helperResp
	if err := p.out.Decode(&r); err != nil {
		p.t.Fatalf("speaker helper %s: no answer (crashed?): %v", c.Op, err)
	}
	return r
}

func (p *speakerProc) must(c helperCmd) helperResp {
	p.t.Helper()
	r := p.call(c)
	if r.Err != "" {
		p.t.Fatalf("speaker %s: %s", c.Op, r.Err)
	}
	return r
}

func (p *speakerProc) learned() []Route {
	p.t.Helper()
	return p.must(helperCmd{Op: "learned"}).Learned
}

func (p *speakerProc) states() []PeerState {
	p.t.Helper()
	return p.must(helperCmd{Op: "states"}).States
}

func (p *speakerProc) established(addr netip.Addr) bool {
	p.t.Helper()
	for _, s := range p.states() {
		if s.Addr == addr {
			return s.Established
		}
	}
	return false
}
