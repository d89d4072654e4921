// Package client is the relay agent: it dials the relay server over QUIC
// or TLS+yamux, keeps the session alive and reconnects, and forwards every
// delivery to the developer's local app, reporting each one on its console.
package client

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/protocol"
)

// Config is everything an agent needs; flags only fill it.
type Config struct {
	// Server is HOST[:PORT] of the relay server (port 443 by default).
	Server string
	// QUICServer overrides the UDP address for QUIC (default: Server's).
	QUICServer string
	// ServerName is the TLS name to verify (default: Server's host).
	ServerName string
	Token      string
	Name       string
	// Transport is "auto" (QUIC, falling back to TCP), "quic" or "tcp".
	Transport string
	// CAFile adds a CA to trust (a dev server's dev-ca.pem).
	CAFile string
	// RootCAs replaces the system roots when set (tests).
	RootCAs *x509.CertPool

	// Target is where deliveries go: PORT, HOST:PORT or a URL.
	Target string
	// Timeout bounds the local app's answer (504 beyond it).
	Timeout time.Duration
	// HostHeader is "rewrite" (the local target's host, default) or
	// "preserve" (the public host).
	HostHeader string

	// QUICTimeout is how long auto waits for QUIC before trying TCP.
	QUICTimeout time.Duration
	// QUICRetry is how often auto tries to move from TCP back to QUIC.
	QUICRetry time.Duration
	// MaxBackoff caps the reconnect delay.
	MaxBackoff time.Duration

	// Store records every delivery; nil records nothing.
	Store *record.Store
	// Secrets maps a provider name to its signing secret (--secret
	// PROVIDER=SECRET): each delivery gets a signature verdict.
	Secrets map[string]string
	// VerifyReject answers 401 instead of forwarding a delivery whose
	// signature does not hold (or is missing where a secret is set).
	VerifyReject bool
	// Dedup forwards each provider event id once within DedupWindow;
	// later copies are answered 200 without reaching the local app.
	Dedup       bool
	DedupWindow time.Duration
	// Retry keeps resending a delivery the local app refused or answered
	// with a 5xx, with backoff, for at most this long (0: no retries).
	Retry time.Duration
	// MaxDeliveries caps the deliveries one session handles at once;
	// beyond it the agent answers 503 without forwarding (default
	// protocol.DefaultMaxDeliveries, what the relay allows a tunnel).
	MaxDeliveries int
	// NoQueue asks the relay not to queue deliveries while this agent is
	// offline: providers get 503 and retry by themselves.
	NoQueue bool

	// Console receives one human line per delivery and per state change.
	Console io.Writer
	Logger  *slog.Logger
	Version string
}

// Defaults.
const (
	DefaultTimeout     = 30 * time.Second
	DefaultQUICTimeout = 3 * time.Second
	DefaultQUICRetry   = 5 * time.Minute
	DefaultMaxBackoff  = 30 * time.Second
)

// ErrConfig wraps every configuration error.
var ErrConfig = errors.New("invalid agent configuration")

// resolved is a Config with defaults applied and derived values computed.
type resolved struct {
	Config
	target   *url.URL
	tcpAddr  string
	udpAddr  string
	tls      *tls.Config
	bodyCap  int64
	verifier *provider.Verifier
}

func (c Config) resolve() (*resolved, error) {
	bad := func(field, format string, a ...any) (*resolved, error) {
		return nil, fmt.Errorf("%w: %s: %s", ErrConfig, field, fmt.Sprintf(format, a...))
	}
	if c.Transport == "" {
		c.Transport = "auto"
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.QUICTimeout == 0 {
		c.QUICTimeout = DefaultQUICTimeout
	}
	if c.QUICRetry == 0 {
		c.QUICRetry = DefaultQUICRetry
	}
	if c.MaxBackoff == 0 {
		c.MaxBackoff = DefaultMaxBackoff
	}
	if c.HostHeader == "" {
		c.HostHeader = "rewrite"
	}
	if c.Console == nil {
		c.Console = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Version == "" {
		c.Version = "dev"
	}
	if c.MaxDeliveries <= 0 {
		c.MaxDeliveries = protocol.DefaultMaxDeliveries
	}
	if c.DedupWindow <= 0 {
		c.DedupWindow = DefaultDedupWindow
	}
	switch {
	case c.Server == "":
		return bad("--server", "required (HOST[:PORT] of your relay server, or set RELAY_SERVER)")
	case c.Token == "":
		return bad("--token", "required (create one on the server with `relay token create --name NAME`, or set RELAY_TOKEN)")
	case c.Transport != "auto" && c.Transport != "quic" && c.Transport != "tcp":
		return bad("--transport", "%q is not auto, quic or tcp", c.Transport)
	case c.HostHeader != "rewrite" && c.HostHeader != "preserve":
		return bad("--host-header", "%q is not rewrite or preserve", c.HostHeader)
	case c.Retry < 0:
		return bad("--retry", "must not be negative")
	}
	for name, secret := range c.Secrets {
		if !slices.Contains(provider.Names(), name) {
			return bad("--secret", "unknown provider %q (known: %s)", name, strings.Join(provider.Names(), ", "))
		}
		if secret == "" {
			return bad("--secret", "empty secret for %s", name)
		}
	}
	if c.VerifyReject && len(c.Secrets) == 0 {
		return bad("--verify", "reject needs at least one --secret PROVIDER=SECRET")
	}
	r := &resolved{Config: c, bodyCap: record.DefaultBodyCap, verifier: &provider.Verifier{Secrets: c.Secrets}}
	if c.Store != nil {
		r.bodyCap = c.Store.BodyCap()
	}
	var err error
	if r.target, err = ParseTarget(c.Target); err != nil {
		return bad("target", "%v", err)
	}
	r.tcpAddr = c.Server
	if _, _, err := net.SplitHostPort(r.tcpAddr); err != nil {
		r.tcpAddr = net.JoinHostPort(strings.Trim(c.Server, "[]"), "443")
	}
	r.udpAddr = r.tcpAddr
	if c.QUICServer != "" {
		r.udpAddr = c.QUICServer
	}
	host, _, _ := net.SplitHostPort(r.tcpAddr)
	if c.ServerName == "" {
		c.ServerName = host
	}
	roots := c.RootCAs
	if c.CAFile != "" {
		pem, err := os.ReadFile(c.CAFile)
		if err != nil {
			return bad("--ca", "%v", err)
		}
		if roots == nil {
			if roots, err = x509.SystemCertPool(); err != nil || roots == nil {
				roots = x509.NewCertPool()
			}
		}
		if !roots.AppendCertsFromPEM(pem) {
			return bad("--ca", "%s holds no PEM certificate", c.CAFile)
		}
	}
	r.tls = &tls.Config{ServerName: c.ServerName, RootCAs: roots, MinVersion: tls.VersionTLS12}
	return r, nil
}

// ParseTarget turns "3000", "host:3000" or a URL into the local app's URL.
func ParseTarget(s string) (*url.URL, error) {
	if s == "" {
		return nil, errors.New("the local app's PORT, HOST:PORT or URL is required")
	}
	if n, err := strconv.Atoi(s); err == nil {
		if n <= 0 || n > 65535 {
			return nil, fmt.Errorf("port %d out of range", n)
		}
		return &url.URL{Scheme: "http", Host: "localhost:" + s}, nil
	}
	if !strings.Contains(s, "://") {
		if _, _, err := net.SplitHostPort(s); err != nil {
			return nil, fmt.Errorf("%q is not PORT, HOST:PORT or a URL", s)
		}
		return &url.URL{Scheme: "http", Host: s}, nil
	}
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", s, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("%q: scheme must be http or https", s)
	}
	if u.Host == "" {
		return nil, fmt.Errorf("%q has no host", s)
	}
	return u, nil
}
