// Package server is the relay server: the HTTPS edge providers post to,
// the acceptors agents connect to over QUIC or TLS+yamux, the routing from
// Host to tunnel, tokens and reserved names, and certificates.
package server

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server/certs"
	"github.com/relaytunnel/relay/server/store"
)

// Server is a running relay server. Start it with Start, stop it with
// Shutdown.
type Server struct {
	cfg      Config
	log      *slog.Logger
	store    Store
	ownStore bool // opened by New, closed by Shutdown
	certs    certs.Source
	devCA    *certs.DevCA
	acme     *certs.ACME
	reg      *registry

	tcpLn    net.Listener
	udpConn  *net.UDPConn
	quicTr   *quic.Transport
	quicLn   *quic.Listener
	httpLn   net.Listener
	https    *http.Server
	redirect *http.Server
	edge     *edge

	metrics   *metrics
	metricsLn net.Listener
	metricsHS *http.Server

	ctx      context.Context // ends sessions on Shutdown
	cancel   context.CancelFunc
	wg       sync.WaitGroup // accept loops and sessions
	draining atomic.Bool
	flight   inflight

	spoolers chan struct{} // a slot per offline delivery being received
	revoked  revokedTokens
	used     tokenUses
	cluster  cluster // live nodes, when NodeName is set
}

// New opens the store and the certificate source and binds every
// listener, so a bad address or certificate fails here, before Start.
func New(ctx context.Context, cfg Config) (*Server, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger, store: cfg.Store, reg: newRegistry(), spoolers: make(chan struct{}, cfg.QueueSpoolers)}
	s.metrics = newMetrics(s)
	if s.store == nil {
		st, err := OpenStore(ctx, StoreConfig{Database: cfg.Database, DataDir: cfg.DataDir, Create: true, RevocationPoll: cfg.RevocationPoll})
		if err != nil {
			return nil, fmt.Errorf("open store: %w", err)
		}
		s.store, s.ownStore = st, true
	}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	if err := s.setup(); err != nil {
		s.closeAll()
		return nil, err
	}
	// Revocations are watched from before the first session is admitted,
	// so none slips between a handshake and the watch.
	revoked, err := s.store.WatchRevocations(s.ctx)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("watch revocations: %w", err)
	}
	queued, err := s.store.WatchQueued(s.ctx)
	if err != nil {
		s.closeAll()
		return nil, fmt.Errorf("watch the queue: %w", err)
	}
	if s.clustered() {
		if err := s.joinCluster(ctx); err != nil {
			s.closeAll()
			return nil, err
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.keepLease(s.ctx)
		}()
	}
	s.wg.Add(3)
	go func() {
		defer s.wg.Done()
		s.endRevoked(revoked)
	}()
	go func() {
		defer s.wg.Done()
		s.wakeDrainers(queued)
	}()
	go func() {
		defer s.wg.Done()
		s.upkeep(s.ctx)
	}()
	return s, nil
}

func (s *Server) setup() error {
	cfg := s.cfg
	policy := certs.HostPolicy{Domain: cfg.Domain, Reserved: s.reserved}
	var err error
	switch {
	case cfg.Dev:
		// The dev CA costs nothing per name, so it serves every NAME.domain
		// and an unknown name gets relay's 404 rather than a TLS alert.
		devPolicy := certs.HostPolicy{Domain: cfg.Domain, Reserved: func(context.Context, string) (bool, error) { return true, nil }}
		s.devCA, err = certs.NewDevCA(cfg.DataDir, devPolicy)
		s.certs = s.devCA
	case cfg.TLSCert != "":
		s.certs, err = certs.LoadStatic(cfg.TLSCert, cfg.TLSKey, cfg.Domain)
	default:
		s.acme, err = certs.NewACME(certs.ACMEConfig{
			Cache:        s.store.CertCache(),
			Email:        cfg.ACMEEmail,
			DirectoryURL: cfg.ACMEDirectory,
			HTTPClient:   cfg.ACMEHTTPClient,
			Policy:       policy,
			Logger:       s.log,
			// Nodes of a cluster share HTTP-01 tokens, and only them.
			HTTP01Only: cfg.NodeName != "",
		})
		s.certs = s.acme
	}
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}

	if err := s.listenTCPAndUDP(); err != nil {
		return err
	}
	if cfg.QUICListen != "off" {
		qaddr := s.udpConn.LocalAddr().String()
		key, err := loadResetKey(cfg.DataDir)
		if err != nil {
			return fmt.Errorf("quic stateless reset key: %w", err)
		}
		s.quicTr = &quic.Transport{Conn: s.udpConn, StatelessResetKey: key}
		qtls := certs.TLSConfig(s.certs, []string{protocol.ALPN})
		// ACME challenges arrive over TCP only; QUIC speaks relay/1 alone.
		qtls.NextProtos = []string{protocol.ALPN}
		if s.quicLn, err = s.quicTr.Listen(qtls, protocol.ServerQUICConfig(protocol.LivenessFor(cfg.Heartbeat))); err != nil {
			return fmt.Errorf("quic listen %s: %w", qaddr, err)
		}
	}
	if cfg.HTTPListen != "off" {
		if s.httpLn, err = cfg.Sockets.listenTCP(cfg.HTTPListen); err != nil {
			return fmt.Errorf("listen %s: %w", cfg.HTTPListen, err)
		}
	}
	if s.metricsLn, err = s.listenMetrics(); err != nil {
		return err
	}
	if err := cfg.Sockets.unused(); err != nil {
		return err
	}

	s.edge = newEdge(s)
	tlsConf := certs.TLSConfig(s.certs, []string{protocol.ALPN, "h2", "http/1.1"})
	s.https = &http.Server{
		Handler:           s.edge,
		TLSConfig:         tlsConf,
		ReadHeaderTimeout: cfg.ReadHeaderTimeout,
		IdleTimeout:       cfg.IdleTimeout,
		MaxHeaderBytes:    1 << 20,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		// Agents arrive on the same port, told apart by ALPN. The handler
		// blocks for the session's life, as TLSNextProto requires.
		TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){
			protocol.ALPN: s.serveTLSAgent,
		},
	}
	// Setting TLSNextProto silently turns HTTP/2 off unless asked for.
	s.https.Protocols = new(http.Protocols)
	s.https.Protocols.SetHTTP1(true)
	s.https.Protocols.SetHTTP2(true)

	if s.httpLn != nil {
		var h http.Handler = certs.RedirectHTTPS(s.publicPort())
		if s.acme != nil {
			h = s.acme.HTTPHandler(h)
		}
		s.redirect = &http.Server{Handler: h, ReadHeaderTimeout: cfg.ReadHeaderTimeout, IdleTimeout: cfg.IdleTimeout}
	}
	if s.metricsLn != nil {
		s.metricsHS = &http.Server{Handler: s.metricsHandler(), ReadHeaderTimeout: cfg.ReadHeaderTimeout, IdleTimeout: cfg.IdleTimeout}
	}
	return nil
}

// Start serves in the background until Shutdown.
func (s *Server) Start() {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.https.ServeTLS(s.tcpLn, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("https listener stopped", "err", err)
		}
	}()
	if s.redirect != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.redirect.Serve(s.httpLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("http listener stopped", "err", err)
			}
		}()
	}
	if s.quicLn != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.acceptQUIC()
		}()
	}
	if s.metricsHS != nil {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			if err := s.metricsHS.Serve(s.metricsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				s.log.Error("metrics listener stopped", "err", err)
			}
		}()
	}
	s.log.Info("relay server listening", "domain", s.cfg.Domain, "https", s.tcpLn.Addr().String(),
		"quic", s.QUICAddr(), "http", s.HTTPAddr(), "metrics", s.MetricsAddr())
}

func (s *Server) acceptQUIC() {
	for {
		c, err := s.quicLn.Accept(s.ctx)
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serveSession(s.ctx, protocol.NewQUICSession(c))
		}()
	}
}

func (s *Server) serveTLSAgent(_ *http.Server, c *tls.Conn, _ http.Handler) {
	sess, err := protocol.ServerYamux(c, protocol.LivenessFor(s.cfg.Heartbeat))
	if err != nil {
		c.Close()
		return
	}
	s.serveSession(s.ctx, sess)
}

// Shutdown stops accepting, lets in-flight deliveries finish (until ctx
// ends), then tells every agent to go away and waits for all goroutines.
func (s *Server) Shutdown(ctx context.Context) error {
	s.draining.Store(true)
	httpDone := make(chan error, 1)
	go func() { httpDone <- s.https.Shutdown(ctx) }()
	if s.redirect != nil {
		go s.redirect.Shutdown(ctx)
	}
	if s.quicLn != nil {
		s.quicLn.Close()
	}
	err := s.flight.wait(ctx)
	for _, t := range s.reg.all() {
		t.ctrl.SendGoAway(protocol.GoAway{Reason: "shutdown", Message: "relay server is restarting"})
		t.sess.Close()
	}
	s.cancel()
	if herr := <-httpDone; err == nil && herr != nil && !errors.Is(herr, context.Canceled) {
		err = herr
	}
	s.https.Close()
	if s.metricsHS != nil {
		// Scraped until the end: /healthz says 503 while deliveries drain.
		s.metricsHS.Close()
	}
	s.wg.Wait()
	s.closeAll()
	if err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

func (s *Server) closeAll() {
	s.cancel()
	// The store's users (revocation watch, upkeep) end with s.ctx.
	s.wg.Wait()
	if s.quicTr != nil {
		s.quicTr.Close()
	}
	if s.udpConn != nil {
		s.udpConn.Close()
	}
	if s.tcpLn != nil {
		s.tcpLn.Close()
	}
	if s.httpLn != nil {
		s.httpLn.Close()
	}
	if s.metricsLn != nil {
		s.metricsLn.Close()
	}
	if s.ownStore {
		s.store.Close()
	}
}

// reserved is the certificate HostPolicy's question: does a token own label?
func (s *Server) reserved(ctx context.Context, label string) (bool, error) {
	_, err := s.store.NameOwner(ctx, label)
	if errors.Is(err, store.ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// Addr is the TCP address for HTTPS and agents.
func (s *Server) Addr() string { return s.tcpLn.Addr().String() }

// QUICAddr is the UDP address for agents, or "" when QUIC is off.
func (s *Server) QUICAddr() string {
	if s.udpConn == nil {
		return ""
	}
	return s.udpConn.LocalAddr().String()
}

// HTTPAddr is the plain-HTTP address, or "" when off.
func (s *Server) HTTPAddr() string {
	if s.httpLn == nil {
		return ""
	}
	return s.httpLn.Addr().String()
}

// Domain is the apex.
func (s *Server) Domain() string { return s.cfg.Domain }

// DevCAPath is the dev CA certificate file, or "" when not in Dev mode.
func (s *Server) DevCAPath() string {
	if s.devCA == nil {
		return ""
	}
	return s.devCA.CertPath()
}

// publicPort is the HTTPS port providers use.
func (s *Server) publicPort() int {
	if s.cfg.PublicPort != 0 {
		return s.cfg.PublicPort
	}
	return s.tcpLn.Addr().(*net.TCPAddr).Port
}

// PublicURL is the URL providers use for name.
func (s *Server) PublicURL(name string) string {
	port := s.publicPort()
	host := name + "." + s.cfg.Domain
	if port != 443 {
		host = net.JoinHostPort(host, strconv.Itoa(port))
	}
	return "https://" + host
}

// Store is the server's database, for the command line and tests.
func (s *Server) Store() Store { return s.store }

// newID is a sortable, unique id with a prefix: "dlv_" + time + random.
func newID(prefix string) string {
	var b [6]byte
	rand.Read(b[:])
	return prefix + "_" + strconv.FormatInt(time.Now().UnixMilli(), 36) + hex.EncodeToString(b[:])
}

// inflight counts deliveries in progress so Shutdown can wait for them.
type inflight struct {
	mu   sync.Mutex
	n    int
	zero chan struct{}
}

func (f *inflight) add() {
	f.mu.Lock()
	f.n++
	f.mu.Unlock()
}

func (f *inflight) done() {
	f.mu.Lock()
	f.n--
	if f.n == 0 && f.zero != nil {
		close(f.zero)
		f.zero = nil
	}
	f.mu.Unlock()
}

func (f *inflight) wait(ctx context.Context) error {
	f.mu.Lock()
	if f.n == 0 {
		f.mu.Unlock()
		return nil
	}
	if f.zero == nil {
		f.zero = make(chan struct{})
	}
	ch := f.zero
	f.mu.Unlock()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("deliveries still in flight: %w", ctx.Err())
	}
}

// listenTCPAndUDP binds --listen and, unless QUIC is off, --quic-listen.
// QUIC on --listen's address takes the port TCP got; with port 0 the
// kernel chose it for TCP alone and another process may hold it for UDP,
// so a few other ports are tried.
func (s *Server) listenTCPAndUDP() error {
	cfg := s.cfg
	host, port, _ := net.SplitHostPort(cfg.Listen)
	for attempt := 0; ; attempt++ {
		var err error
		if s.tcpLn, err = cfg.Sockets.listenTCP(cfg.Listen); err != nil {
			return fmt.Errorf("listen %s: %w", cfg.Listen, err)
		}
		if cfg.QUICListen == "off" {
			return nil
		}
		qaddr := cfg.QUICListen
		if qaddr == cfg.Listen {
			qaddr = net.JoinHostPort(host, strconv.Itoa(s.tcpLn.Addr().(*net.TCPAddr).Port))
		}
		if s.udpConn, err = cfg.Sockets.listenUDP(qaddr); err == nil {
			return nil
		}
		if port == "0" && qaddr != cfg.QUICListen && attempt < 10 && errors.Is(err, syscall.EADDRINUSE) {
			s.tcpLn.Close()
			continue
		}
		return fmt.Errorf("quic listen %s: %w", qaddr, err)
	}
}
