package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// DefaultIssueTimeout is how long a handshake waits for a certificate that
// is being obtained. Issuance goes on in the background after it (up to
// autocert's own five minutes), so the provider's retry finds the
// certificate ready.
const DefaultIssueTimeout = 30 * time.Second

// issueLockWait bounds the wait for another node's order, as autocert
// bounds an order itself.
const issueLockWait = 5 * time.Minute

// IssueLocker is a cache shared by several nodes that can make them take
// turns ordering a name's first certificate. Without turns, nodes that get
// the name's first handshakes at the same moment each order one.
type IssueLocker interface {
	// LockIssue blocks until this node alone holds name's turn, or ctx
	// ends; unlock gives the turn back.
	LockIssue(ctx context.Context, name string) (unlock func(), err error)
}

// ACMEConfig configures certificates from an ACME CA.
type ACMEConfig struct {
	// Dir caches the account key and certificates across restarts,
	// unless Cache is set (the server's database keeps them). A Cache
	// that is also an IssueLocker is shared: first orders take turns.
	Dir   string
	Cache autocert.Cache
	Email string // optional contact for the CA's expiry notices
	// DirectoryURL defaults to Let's Encrypt production.
	DirectoryURL string
	// HTTPClient talks to the CA; tests set one that trusts a test CA.
	HTTPClient *http.Client
	Policy     HostPolicy
	Logger     *slog.Logger // default: discard
	// IssueTimeout bounds a handshake's wait; default DefaultIssueTimeout.
	IssueTimeout time.Duration
	// HTTP01Only leaves TLS-ALPN-01 out: several nodes share the cache,
	// where autocert keeps HTTP-01 tokens, but a TLS-ALPN-01 token lives
	// in the memory of the node that ordered the certificate, and the CA
	// may reach another. acme-tls/1 is then never offered, so autocert's
	// TLS-ALPN-01 attempt fails the same way on every node and it goes on
	// to HTTP-01 (one failed validation per new name).
	HTTP01Only bool
}

func (c ACMEConfig) withDefaults() (ACMEConfig, error) {
	switch {
	case c.Dir == "" && c.Cache == nil:
		return c, errors.New("acme: a cache or a cache directory is required")
	case c.Policy.Domain == "":
		return c, errors.New("acme: domain is required")
	case !strings.Contains(strings.Trim(c.Policy.Domain, "."), "."):
		return c, fmt.Errorf("acme: %q cannot have a public certificate; use --dev or --tls-cert", c.Policy.Domain)
	case c.IssueTimeout < 0:
		return c, fmt.Errorf("acme: negative issue timeout %s", c.IssueTimeout)
	}
	if c.DirectoryURL == "" {
		c.DirectoryURL = autocert.DefaultACMEDirectory
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.IssueTimeout == 0 {
		c.IssueTimeout = DefaultIssueTimeout
	}
	return c, nil
}

// ACME obtains, caches and renews certificates with autocert. It answers
// TLS-ALPN-01 on the shared TLS listener (see TLSConfig) and HTTP-01
// through HTTPHandler.
type ACME struct {
	m          *autocert.Manager
	policy     HostPolicy
	log        *slog.Logger
	timeout    time.Duration
	http01Only bool
	locker     IssueLocker // nil: one node
	held       sync.Map    // names this node has a certificate for
	turns      sync.Map    // name -> *sync.Mutex: who on this node takes the cluster's turn
}

// NewACME builds the autocert manager; nothing is requested until the
// first handshake for a name.
func NewACME(cfg ACMEConfig) (*ACME, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cache := cfg.Cache
	if cache == nil {
		cache = autocert.DirCache(cfg.Dir)
	}
	locker, _ := cache.(IssueLocker)
	return &ACME{
		locker: locker,
		m: &autocert.Manager{
			Prompt:     autocert.AcceptTOS,
			Cache:      cache,
			HostPolicy: cfg.Policy.Allow,
			Email:      cfg.Email,
			Client: &acme.Client{
				DirectoryURL: cfg.DirectoryURL,
				HTTPClient:   cfg.HTTPClient,
				UserAgent:    "relay",
			},
		},
		policy:     cfg.Policy,
		log:        cfg.Logger,
		timeout:    cfg.IssueTimeout,
		http01Only: cfg.HTTP01Only,
	}, nil
}

// GetCertificate serves the certificate for an allowed name, obtaining it
// on first use, and answers the CA's TLS-ALPN-01 validation hellos. A hello
// without SNI gets the apex's certificate. A name outside the policy, or one
// the CA did not certify within the issue timeout, ends the handshake with
// an alert.
func (a *ACME) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := serverName(hello, a.policy.Domain)
	// Refuse other domains before autocert sees them: scanners send any
	// SNI, and that costs neither a store query nor a log line above debug.
	if _, err := a.policy.label(name); err != nil {
		a.log.Debug("certificate refused", "name", name, "reason", err)
		return nil, err
	}
	if hello.ServerName != name || onlyTLS13(hello) {
		h := *hello
		h.ServerName = name
		if onlyTLS13(hello) {
			// autocert picks ECDSA only when the hello offers an ECDSA
			// TLS 1.2 suite. A TLS 1.3-only client (every QUIC client)
			// offers none, so it would order a second, RSA certificate for
			// the same name; TLS 1.3 chooses by signature scheme, which
			// autocert still checks.
			h.CipherSuites = append(slices.Clip(h.CipherSuites), tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256)
		}
		hello = &h
	}
	ctx := hello.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, a.timeout)
	defer cancel()

	type result struct {
		cert *tls.Certificate
		err  error
	}
	// autocert takes no context (it bounds itself at five minutes), so the
	// wait is bounded here; the goroutine ends when autocert returns.
	done := make(chan result, 1)
	go func() {
		unlock := a.takeTurn(hello, name)
		cert, err := a.m.GetCertificate(hello)
		if err == nil {
			a.held.Store(name, struct{}{})
		}
		unlock()
		done <- result{cert, err}
	}()
	select {
	case r := <-done:
		switch {
		case r.err == nil:
		case errors.Is(r.err, ErrNotAllowed):
			a.log.Debug("certificate refused", "name", name, "reason", r.err)
		default:
			a.log.Warn("acme certificate unavailable", "name", name, "reason", r.err)
		}
		return r.cert, r.err
	case <-ctx.Done():
		err := fmt.Errorf("certificate for %s not ready: %w", name, ctx.Err())
		a.log.Warn("acme certificate unavailable", "name", name, "reason", err, "waited", time.Since(start).Round(time.Millisecond))
		return nil, err
	}
}

// takeTurn waits, when name may need its first certificate, until no other
// node is ordering it; autocert then finds that node's certificate in the
// shared cache instead of ordering a second one. Names this node has a
// certificate for cost nothing; others cost a reservation check and a
// cache read, and at most one handshake per name on this node waits for
// the cluster's turn (the rest wait here), so a burst of hellos cannot
// open a database connection each. Without the cluster's turn (database
// unreachable) the order goes ahead: a duplicate certificate is better
// than none.
func (a *ACME) takeTurn(hello *tls.ClientHelloInfo, name string) (unlock func()) {
	nothing := func() {}
	if a.locker == nil || slices.Equal(hello.SupportedProtos, []string{acme.ALPNProto}) {
		return nothing
	}
	if _, ok := a.held.Load(name); ok {
		return nothing
	}
	ctx, cancel := context.WithTimeout(context.Background(), issueLockWait)
	defer cancel()
	// autocert refuses the name too; asking first keeps the turns (and
	// their connections) to names that may have a certificate.
	if err := a.policy.Allow(ctx, name); err != nil {
		return nothing
	}
	local, _ := a.turns.LoadOrStore(name, new(sync.Mutex))
	mu := local.(*sync.Mutex)
	mu.Lock()
	if _, ok := a.held.Load(name); ok {
		mu.Unlock()
		return nothing
	}
	// autocert keeps a name's ECDSA certificate under the bare name; an
	// RSA-only client's first certificate for a name that has an ECDSA one
	// is left to race.
	if _, err := a.m.Cache.Get(ctx, name); err == nil {
		mu.Unlock()
		return nothing
	}
	release, err := a.locker.LockIssue(ctx, name)
	if err != nil {
		a.log.Warn("acme order without the cluster's turn", "name", name, "reason", err)
		return mu.Unlock
	}
	return func() {
		release()
		mu.Unlock()
	}
}

// HTTPHandler answers HTTP-01 validation on port 80 and passes every other
// request to fallback (normally RedirectHTTPS). Calling it is what lets
// autocert fall back to HTTP-01 when TLS-ALPN-01 fails. The challenge token
// comes from autocert's memory or else from the cache, so with a shared
// cache any node answers for a certificate another node ordered.
func (a *ACME) HTTPHandler(fallback http.Handler) http.Handler {
	if fallback == nil {
		fallback = RedirectHTTPS(443)
	}
	challenges := a.m.HTTPHandler(fallback)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// A CA may name the port it dialled in Host ("name:80" is valid
		// HTTP; Pebble always sends one), and the host policy refuses a
		// name with a port, as a TLS name never has one: the CA's check
		// then fails with 403. The name is what is being validated.
		if host, _, err := net.SplitHostPort(r.Host); err == nil {
			r = r.WithContext(r.Context()) // a copy: the caller's request stays as it came
			r.Host = host
		}
		challenges.ServeHTTP(w, r)
	})
}

// onlyTLS13 reports whether the client offers TLS 1.3 and nothing older.
func onlyTLS13(hello *tls.ClientHelloInfo) bool {
	if len(hello.SupportedVersions) == 0 {
		return false
	}
	for _, v := range hello.SupportedVersions {
		if v < tls.VersionTLS13 {
			return false
		}
	}
	return true
}

func (a *ACME) challengeProtos() []string {
	if a.http01Only {
		return nil
	}
	return []string{acme.ALPNProto}
}
