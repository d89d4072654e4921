// Package inspect is the agent's local web inspector: the page `relay connect`
// serves at http://127.0.0.1:4040 and the JSON API behind it. It lists the
// recorded deliveries live, shows one with its request, response, timings and
// signature verdict, replays it as recorded or edited, and compares two.
//
// The inspector shows webhook bodies and can replay them, so it is reachable
// only from this machine: Serve listens on loopback only, every request must
// name a loopback host (a page on another site that rebinds its DNS name to
// 127.0.0.1 is refused), and anything that acts must come from the
// inspector's own page.
package inspect

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/record"
)

// ErrNotLoopback is returned by Serve for a listener that is not on a
// loopback address.
var ErrNotLoopback = errors.New("the inspector listens on loopback only")

// Options configures a Server; the zero value is usable.
type Options struct {
	// Replay sends a recorded delivery to the local app again, as recorded
	// or (edit not nil) as edited on the page, and returns the new
	// recording. Nil disables replay (501).
	Replay func(ctx context.Context, id int64, edit *client.ReplayEdit) (*record.Delivery, error)
	// Info says which tunnel the page belongs to; nil leaves the header
	// blank.
	Info func() Info
	// Connected, when set, is closed once the agent has its public URL;
	// open pages are then told to ask Info again.
	Connected <-chan struct{}
	// Logger receives debug lines; nil discards them.
	Logger *slog.Logger
	// Metrics and Health, when set, are served at /metrics (the agent's
	// Prometheus metrics) and /healthz: a scraper on this machine finds
	// them beside the page.
	Metrics, Health http.Handler
}

// Info is what the page's header and empty state say about the agent.
type Info struct {
	Tunnel    string // the tunnel's name
	PublicURL string // https://NAME.relay.example.com, "" until connected
	Target    string // the local app: http://localhost:3000
	// CAFile is the CA the agent was told to trust (a dev relay's), which
	// curl and `relay trigger` need too.
	CAFile string
	// Signing names the providers the agent has a --secret for.
	Signing []string
}

// Server is the inspector: an http.Handler over a recording store, plus a
// fan-out of "a delivery was recorded" events to open pages.
type Server struct {
	st        *record.Store
	replay    func(ctx context.Context, id int64, edit *client.ReplayEdit) (*record.Delivery, error)
	info      func() Info
	connected <-chan struct{}
	log       *slog.Logger
	mux       *http.ServeMux
	hub       *hub

	// keepAlive is how often an idle event stream gets a comment, so that
	// proxies and the browser see it is alive.
	keepAlive time.Duration
}

// Timeouts of the http.Server Serve runs; the event stream has no write
// timeout of its own but a deadline per write.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	idleTimeout       = 2 * time.Minute
	writeTimeout      = 30 * time.Second
	replayTimeout     = 2 * time.Minute // the local app may be slow to answer
	shutdownTimeout   = 5 * time.Second
	maxHeaderBytes    = 64 << 10
)

// New builds an inspector over st.
func New(st *record.Store, opt Options) *Server {
	log := opt.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Server{
		st:        st,
		replay:    opt.Replay,
		info:      opt.Info,
		connected: opt.Connected,
		log:       log,
		hub:       newHub(),
		keepAlive: 15 * time.Second,
	}
	s.mux = s.routes()
	if opt.Metrics != nil {
		s.mux.Handle("GET /metrics", opt.Metrics)
	}
	if opt.Health != nil {
		s.mux.Handle("GET /healthz", opt.Health)
	}
	return s
}

// ServeHTTP refuses requests that do not come from this machine's browser and
// serves the page and the API.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	setSecurityHeaders(w.Header())
	if !loopbackHost(r.Host) {
		writeError(w, http.StatusForbidden, fmt.Sprintf(
			"host %q is not a loopback name: open the inspector at http://127.0.0.1:PORT/", r.Host))
		return
	}
	if !safeMethod(r.Method) {
		if err := sameOrigin(r); err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
	} else if strings.HasPrefix(r.URL.Path, "/api/") {
		if err := notCrossSite(r); err != nil {
			writeError(w, http.StatusForbidden, err.Error())
			return
		}
	}
	if r.URL.Path != "/api/events" {
		// Serve sets no server-wide write timeout, for the event stream's sake.
		http.NewResponseController(w).SetWriteDeadline(time.Now().Add(writeTimeout))
	}
	s.mux.ServeHTTP(w, r)
}

// Notify tells every open page that delivery id was recorded. It never
// blocks: a page that falls behind is told to reload its list instead.
func (s *Server) Notify(id int64) {
	if id > 0 {
		s.hub.publish(id)
	}
}

// InfoChanged tells every open page to ask for Info again (the agent
// connected and has its public URL).
func (s *Server) InfoChanged() { s.hub.publish(infoChanged) }

// streamsKey carries, in each request's context, a channel closed when Serve
// begins shutting down, so that event streams end and shutdown can finish.
type streamsKey struct{}

// Serve serves the inspector on ln until ctx ends, then shuts down, waiting
// for open requests and ending event streams. It closes ln. A listener not on
// a loopback address is refused with ErrNotLoopback.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	if err := checkLoopbackAddr(ln.Addr()); err != nil {
		ln.Close()
		return err
	}
	stopping := make(chan struct{})
	spares := &spareConns{m: map[net.Conn]struct{}{}}
	srv := &http.Server{
		ConnState:         spares.track,
		Handler:           s,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		BaseContext: func(net.Listener) context.Context {
			return context.WithValue(context.Background(), streamsKey{}, (<-chan struct{})(stopping))
		},
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if s.connected == nil {
			return
		}
		select {
		case <-s.connected:
			s.InfoChanged()
		case <-stopping:
		}
	}()

	select {
	case err := <-served:
		close(stopping)
		<-watched
		return fmt.Errorf("inspector on %s: %w", ln.Addr(), err)
	case <-ctx.Done():
	}
	// Shutdown waits for handlers, and event streams never finish by
	// themselves: end them first.
	close(stopping)
	<-watched
	// A browser opens connections ahead of need; one that has sent no
	// byte of a request carries nothing, and Shutdown would wait five
	// seconds for it (its rule for a new connection).
	spares.closeAll()
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
		err = fmt.Errorf("inspector shutdown: %w", err)
	}
	<-served // http.ErrServerClosed once Shutdown has begun
	return err
}

// spareConns are a server's connections that have not sent a byte of a
// request yet.
type spareConns struct {
	mu sync.Mutex
	m  map[net.Conn]struct{}
}

func (s *spareConns) track(c net.Conn, state http.ConnState) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if state == http.StateNew {
		s.m[c] = struct{}{}
	} else {
		delete(s.m, c)
	}
}

func (s *spareConns) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.m {
		c.Close()
	}
}

// stopping is the channel Serve closes at shutdown, or nil (never ready) when
// the handler runs under someone else's http.Server.
func stopping(r *http.Request) <-chan struct{} {
	ch, _ := r.Context().Value(streamsKey{}).(<-chan struct{})
	return ch
}
