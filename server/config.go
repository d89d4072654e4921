package server

import (
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/relaytunnel/relay/protocol"
)

// Config is everything a relay server needs; flags only fill it.
// The zero value of every field means "the default" (see withDefaults).
type Config struct {
	// Domain is the apex: agents connect to it and tunnels live at
	// NAME.Domain. In Dev mode it defaults to "localhost".
	Domain string
	// Listen is the TCP address for HTTPS and agents' TLS+yamux.
	Listen string
	// QUICListen is the UDP address for agents' QUIC; "off" disables it.
	QUICListen string
	// HTTPListen answers ACME HTTP-01 and redirects to HTTPS; "off" disables it.
	HTTPListen string
	// MetricsListen serves /metrics (Prometheus) and /healthz; "" or "off"
	// disables it. `relay server` defaults to DefaultMetricsListen.
	MetricsListen string
	// PublicPort is the port providers use, when it differs from Listen's
	// (a port forward); 0 means Listen's port. 443 is left out of URLs.
	PublicPort int
	// DataDir holds the dev CA, and, without Database, the SQLite
	// database and the ACME cache.
	DataDir string
	// Sockets are listening sockets inherited from systemd; the
	// addresses above that match one use it instead of binding.
	Sockets *Sockets
	// Database is a PostgreSQL URL (postgres://...) for the server's state
	// (tokens, names, queue, delivery log, ACME cache), shared by every
	// node that uses it. Empty: SQLite in DataDir.
	Database string
	// Store, when set, is used instead of opening DataDir or Database; the
	// caller keeps it and closes it after Shutdown.
	Store Store
	// RevocationPoll is how often the store is polled for tokens revoked
	// by another process (PostgreSQL also hears of them at once through
	// LISTEN/NOTIFY); 0 means the backend's default (1 s SQLite, 5 s
	// PostgreSQL).
	RevocationPoll time.Duration

	// NodeName and Advertise make this server one node of a cluster
	// sharing Database: it holds a lease on NodeName in the node registry
	// (renewed every NodeLease/3; the node is gone when it runs out), and
	// agents are told to dial it at Advertise (host:port, TCP and UDP,
	// TLS name the apex). A node restarted under its old name takes it
	// back at once.
	NodeName  string
	Advertise string
	NodeLease time.Duration

	// Certificates: Dev, or TLSCert+TLSKey, or ACME (the default).
	Dev           bool
	TLSCert       string
	TLSKey        string
	ACMEEmail     string
	ACMEDirectory string
	// ACMEHTTPClient talks to the ACME server; tests use it to trust a
	// test CA such as Pebble.
	ACMEHTTPClient *http.Client

	// MaxBody is the largest request body forwarded (413 beyond it).
	MaxBody int64
	// MaxDeliveries caps the deliveries one tunnel carries at once (503
	// with Retry-After beyond it); uploads still arriving may hold at most
	// half of them.
	MaxDeliveries int
	// BodyTimeout and MinBodyRate bound how slowly a provider may send a
	// request body: it is cut (408) once BodyTimeout has passed since its
	// first read, plus one second for every MinBodyRate bytes received.
	BodyTimeout time.Duration
	MinBodyRate int64
	// ReadHeaderTimeout bounds how long a provider may take to send its
	// request headers (slowloris).
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes providers' idle keep-alive connections.
	IdleTimeout time.Duration
	// ResponseTimeout bounds the wait for the agent's response headers;
	// the agent's own, shorter timeout for the local app normally answers
	// first with a 504 of its own.
	ResponseTimeout time.Duration
	// Heartbeat is the keep-alive interval of agent sessions (both sides
	// probe a session that received nothing for this long); a session that
	// receives nothing at all for three intervals is closed.
	Heartbeat time.Duration
	// HandshakeTimeout bounds an agent's TLS/QUIC handshake plus Hello.
	HandshakeTimeout time.Duration
	// QueueMaxCount and QueueMaxBytes bound each name's offline queue,
	// QueueMaxTotalBytes the bodies kept for all names together (the
	// disk the queue may use); beyond them providers get 503 with
	// Retry-After, checked against Content-Length before the body is read.
	QueueMaxCount      int
	QueueMaxBytes      int64
	QueueMaxTotalBytes int64
	// QueueSpoolers bounds how many offline deliveries are received at
	// once (each holds about one 256 KiB chunk in memory); the others
	// wait for a turn, then get 503.
	QueueSpoolers int
	// QueueMaxAttempts is how many times the local app may time out or
	// fail on a queued delivery before it is dead-lettered: moved out of
	// the queue, logged, and the deliveries behind it go on. An app that
	// is not running, or a dropped session, does not count.
	QueueMaxAttempts int

	Logger  *slog.Logger
	Version string // build version, reported to agents
}

// Defaults.
const (
	DefaultMaxBody           = 32 << 20
	DefaultBodyTimeout       = 20 * time.Second
	DefaultMinBodyRate       = 16 << 10
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 90 * time.Second
	DefaultResponseTimeout   = 2 * time.Minute
	DefaultHeartbeat         = protocol.DefaultKeepAlive
	DefaultHandshakeTimeout  = 10 * time.Second
	DefaultQueueMaxCount     = 10000
	DefaultQueueMaxBytes     = 512 << 20
	DefaultQueueMaxTotal     = 4 << 30
	DefaultQueueSpoolers     = 16
	DefaultQueueMaxAttempts  = 10
	// DefaultMetricsListen is loopback (the metrics name every tunnel), on
	// a port beside, not on, Prometheus's own 9090.
	DefaultMetricsListen = "127.0.0.1:9190"
	DefaultNodeLease     = 15 * time.Second
)

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid server configuration")

// withDefaults returns c with defaults filled in and checks it, naming the
// bad field in its error.
func (c Config) withDefaults() (Config, error) {
	if c.Dev {
		if c.Domain == "" {
			c.Domain = "localhost"
		}
		if c.Listen == "" {
			c.Listen = "127.0.0.1:8443"
		}
		if c.QUICListen == "" {
			c.QUICListen = c.Listen
		}
		if c.HTTPListen == "" {
			c.HTTPListen = "off"
		}
	}
	if c.Listen == "" {
		c.Listen = ":443"
	}
	if c.QUICListen == "" {
		// QUIC shares the TCP address: one port to open, one to document.
		c.QUICListen = c.Listen
	}
	if c.HTTPListen == "" {
		c.HTTPListen = ":80"
	}
	if c.MaxBody == 0 {
		c.MaxBody = DefaultMaxBody
	}
	if c.MaxDeliveries == 0 {
		c.MaxDeliveries = protocol.DefaultMaxDeliveries
	}
	if c.BodyTimeout == 0 {
		c.BodyTimeout = DefaultBodyTimeout
	}
	if c.MinBodyRate == 0 {
		c.MinBodyRate = DefaultMinBodyRate
	}
	if c.ReadHeaderTimeout == 0 {
		c.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if c.IdleTimeout == 0 {
		c.IdleTimeout = DefaultIdleTimeout
	}
	if c.ResponseTimeout == 0 {
		c.ResponseTimeout = DefaultResponseTimeout
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = DefaultHeartbeat
	}
	if c.HandshakeTimeout == 0 {
		c.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if c.QueueMaxCount == 0 {
		c.QueueMaxCount = DefaultQueueMaxCount
	}
	if c.QueueMaxBytes == 0 {
		c.QueueMaxBytes = DefaultQueueMaxBytes
	}
	c.QueueMaxTotalBytes = cmp.Or(c.QueueMaxTotalBytes, DefaultQueueMaxTotal)
	c.QueueSpoolers = cmp.Or(c.QueueSpoolers, DefaultQueueSpoolers)
	c.QueueMaxAttempts = cmp.Or(c.QueueMaxAttempts, DefaultQueueMaxAttempts)
	if c.MetricsListen == "" {
		c.MetricsListen = "off"
	}
	c.NodeLease = cmp.Or(c.NodeLease, DefaultNodeLease)
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	c.Domain = strings.TrimSuffix(strings.ToLower(c.Domain), ".")

	bad := func(field, format string, a ...any) (Config, error) {
		return c, fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, a...))
	}
	switch {
	case c.Domain == "":
		return bad("--domain", "required (the apex, e.g. relay.example.com; its wildcard *.DOMAIN must point here too)")
	case strings.ContainsAny(c.Domain, ":/ "):
		return bad("--domain", "%q is not a host name", c.Domain)
	case c.DataDir == "" && c.Database == "" && c.Store == nil:
		return bad("--data", "required (a directory for the database and certificates), or --database")
	case c.DataDir == "" && c.Dev:
		return bad("--data", "required with --dev (the dev CA lives there)")
	case c.Database != "" && c.Store != nil:
		return bad("--database", "a Store is given already")
	case c.QueueMaxCount < 0 || c.QueueMaxBytes < 0 || c.QueueMaxTotalBytes < 0:
		return bad("--queue-max-*", "must be positive")
	case c.QueueMaxBytes > c.QueueMaxTotalBytes:
		return bad("--queue-max-bytes", "%d is over --queue-max-total-bytes %d", c.QueueMaxBytes, c.QueueMaxTotalBytes)
	case c.QueueSpoolers < 0 || c.QueueMaxAttempts < 0:
		return bad("queue settings", "must be positive")
	case c.MaxBody < 0:
		return bad("--max-body", "must be positive")
	case c.MaxDeliveries < 2:
		return bad("max deliveries", "must be at least 2")
	case c.BodyTimeout < 0 || c.MinBodyRate < 0:
		return bad("body timeout", "must be positive")
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return bad("--tls-cert/--tls-key", "give both or neither")
	case c.Dev && c.TLSCert != "":
		return bad("--dev", "uses its own CA; drop --tls-cert/--tls-key")
	case c.Heartbeat < 10*time.Millisecond:
		return bad("heartbeat", "too short")
	case c.NodeName != "" && c.Database == "" && c.Store == nil:
		return bad("--node-name", "needs --database postgres://...: the nodes of a cluster share one PostgreSQL database (SQLite in --data serves a single node)")
	case c.NodeName != "" && !protocol.ValidName(c.NodeName):
		return bad("--node-name", "%q: use 1-63 of a-z, 0-9 and '-'", c.NodeName)
	case (c.NodeName == "") != (c.Advertise == ""):
		return bad("--node-name/--advertise", "give both or neither (--advertise is the HOST:PORT agents dial this node at)")
	case c.NodeLease < 100*time.Millisecond:
		return bad("node lease", "too short")
	}
	if c.Advertise != "" {
		if _, port, err := net.SplitHostPort(c.Advertise); err != nil || port == "" {
			return bad("--advertise", "%q is not HOST:PORT", c.Advertise)
		}
	}
	for _, a := range []struct{ name, addr string }{{"--listen", c.Listen}, {"--quic-listen", c.QUICListen}, {"--http-listen", c.HTTPListen}, {"--metrics-listen", c.MetricsListen}} {
		if a.addr == "off" {
			continue
		}
		if _, _, err := net.SplitHostPort(a.addr); err != nil {
			return bad(a.name, "%q is not HOST:PORT", a.addr)
		}
	}
	if c.Listen == "off" {
		return bad("--listen", "cannot be off")
	}
	return c, nil
}
