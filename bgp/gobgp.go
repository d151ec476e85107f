package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v3/api"
	"github.com/osrg/gobgp/v3/pkg/server"
)

// resyncDelay collapses a burst of BGP events into one read of the RIB.
const resyncDelay = 20 * time.Millisecond

// GoBGP is the Speaker on GoBGP v3's pkg/server, embedded in the process.
//
// GoBGP's server loop (BgpServer.Serve) has no way to end in v3, so one
// GoBGP value owns one BgpServer for its whole life and reuses it across
// Start/Stop cycles: a Stop leaves exactly that one parked loop, and
// starting and stopping again adds nothing. Make one GoBGP per process
// (weftd: in main) and hand it to whoever runs the bgp backend.
type GoBGP struct {
	log *slog.Logger

	mu      sync.Mutex
	srv     *server.BgpServer
	running bool
	cfg     Config
	peers   map[netip.Addr]Peer
	adv     map[netip.Prefix]*api.Path
	ext     map[string]bool // the external peer set, as GoBGP holds it
	view    view

	changed chan struct{}
	dirty   chan struct{}
	cancel  context.CancelFunc // the watch and the resync loop
	done    chan struct{}      // closed when the resync loop ended
}

// view is what the last read of the RIB produced.
type view struct {
	policy        ImportPolicy
	learned       []Route
	rejected      []Rejection
	rejectedTotal uint64
	seen          map[Rejection]bool
}

var _ Speaker = (*GoBGP)(nil)

// NewGoBGP returns a stopped speaker logging to log.
func NewGoBGP(log *slog.Logger) *GoBGP {
	if log == nil {
		log = slog.Default()
	}
	return &GoBGP{log: log, changed: make(chan struct{}, 1)}
}

// Start implements Speaker.
func (g *GoBGP) Start(ctx context.Context, cfg Config) error {
	if !cfg.RouterID.Is4() {
		return fmt.Errorf("bgp start: router ID %v is not an IPv4 address", cfg.RouterID)
	}
	if cfg.ASN == 0 {
		return errors.New("bgp start: AS number 0")
	}
	cfg = cfg.withDefaults()
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.running {
		return errors.New("bgp start: already running")
	}
	if g.srv == nil {
		g.srv = server.NewBgpServer(server.LoggerOption(newLogAdapter(g.log)))
		go g.srv.Serve()
	}
	listen := "0.0.0.0"
	if cfg.ListenAddr.IsValid() {
		listen = cfg.ListenAddr.String()
	}
	err := g.srv.StartBgp(ctx, &api.StartBgpRequest{Global: &api.Global{
		Asn: cfg.ASN, RouterId: cfg.RouterID.String(),
		ListenPort: int32(cfg.ListenPort), ListenAddresses: []string{listen},
	}})
	if err != nil {
		return fmt.Errorf("bgp start on %s:%d: %w", listen, cfg.ListenPort, err)
	}
	if err := g.installExportPolicy(ctx); err != nil {
		_ = g.srv.StopBgp(context.Background(), &api.StopBgpRequest{})
		return err
	}
	if err := g.startWatch(); err != nil {
		_ = g.srv.StopBgp(context.Background(), &api.StopBgpRequest{})
		return err
	}
	g.running, g.cfg = true, cfg
	g.peers, g.adv = map[netip.Addr]Peer{}, map[netip.Prefix]*api.Path{}
	g.view = view{policy: g.view.policy, seen: map[Rejection]bool{}}
	return nil
}

// startWatch subscribes to peer and table events; each marks the RIB dirty
// for the resync loop. The watch has its own context, cancelled before
// StopBgp (osrg/gobgp#3366: a watch outliving StopBgp strands its
// goroutine).
func (g *GoBGP) startWatch() error {
	ctx, cancel := context.WithCancel(context.Background())
	g.dirty = make(chan struct{}, 1)
	dirty := g.dirty
	req := &api.WatchEventRequest{
		Peer: &api.WatchEventRequest_Peer{},
		Table: &api.WatchEventRequest_Table{Filters: []*api.WatchEventRequest_Table_Filter{
			{Type: api.WatchEventRequest_Table_Filter_BEST},
			{Type: api.WatchEventRequest_Table_Filter_ADJIN},
		}},
	}
	if err := g.srv.WatchEvent(ctx, req, func(*api.WatchEventResponse) { signal(dirty) }); err != nil {
		cancel()
		return fmt.Errorf("bgp watch: %w", err)
	}
	g.cancel, g.done = cancel, make(chan struct{})
	go g.resyncLoop(ctx, dirty, g.done)
	return nil
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

func (g *GoBGP) resyncLoop(ctx context.Context, dirty chan struct{}, done chan struct{}) {
	defer close(done)
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-dirty:
			t.Reset(resyncDelay)
		case <-t.C:
			if err := g.resync(ctx); err != nil && ctx.Err() == nil {
				g.log.Warn("bgp: reading the RIB failed", "err", err)
				t.Reset(time.Second)
			}
		}
	}
}

// Stop implements Speaker.
func (g *GoBGP) Stop(ctx context.Context) error {
	g.mu.Lock()
	if !g.running {
		g.mu.Unlock()
		return nil
	}
	g.running = false
	cancel, done := g.cancel, g.done
	g.mu.Unlock()
	cancel()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("bgp stop: %w", ctx.Err())
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.srv.StopBgp(ctx, &api.StopBgpRequest{}); err != nil {
		return fmt.Errorf("bgp stop: %w", err)
	}
	g.view.learned, g.view.rejected = nil, nil
	signal(g.changed)
	return nil
}

// Changed implements Speaker.
func (g *GoBGP) Changed() <-chan struct{} { return g.changed }

// SetImportPolicy implements Speaker.
func (g *GoBGP) SetImportPolicy(p ImportPolicy) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.view.policy = p
	if g.running {
		signal(g.dirty)
	}
}

// Learned implements Speaker.
func (g *GoBGP) Learned() []Route {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.view.learned)
}

// Rejected implements Speaker.
func (g *GoBGP) Rejected() ([]Rejection, uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.view.rejected), g.view.rejectedTotal
}
