package certs_test

import (
	"crypto/tls"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/pebbletest"
	"github.com/relaytunnel/relay/server/certs"
)

const acmeDomain = "relay.test"

// newACME builds an ACME source against pebble from where (its cache:
// Dir or Cache, and Email), logging into logs when that is not nil.
func newACME(t *testing.T, where certs.ACMEConfig, pebble *pebbletest.Pebble, logs *lockedBuffer) *certs.ACME {
	t.Helper()
	cfg := where
	cfg.DirectoryURL = pebble.DirectoryURL
	cfg.HTTPClient = pebble.HTTPClient()
	cfg.Policy = certs.HostPolicy{Domain: acmeDomain, Reserved: reservedSet("abc", "web")}
	cfg.IssueTimeout = 20 * time.Second
	if logs != nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	a, err := certs.NewACME(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// inDir is an ACME source's cache in dir, as a single server keeps it.
func inDir(dir string) certs.ACMEConfig { return certs.ACMEConfig{Dir: dir, Email: "ops@relay.test"} }

// countChallengeHellos wraps the config's GetCertificate to count the
// CA's TLS-ALPN-01 validation handshakes.
func countChallengeHellos(cfg *tls.Config) *atomic.Int64 {
	var n atomic.Int64
	get := cfg.GetCertificate
	cfg.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == "acme-tls/1" {
			n.Add(1)
		}
		return get(hello)
	}
	return &n
}

func TestACMEObtainsCertificatesWithTLSALPN01(t *testing.T) {
	ln := reservePort(t)
	pebble := pebbletest.Start(t, ln.Addr().(*net.TCPAddr).Port, 0)
	a := newACME(t, inDir(t.TempDir()), pebble, nil)
	cfg := certs.TLSConfig(a, []string{"relay/1", "h2", "http/1.1"})
	challenges := countChallengeHellos(cfg)
	addr := serveTLSOn(t, ln, cfg)

	for _, name := range []string{acmeDomain, "abc." + acmeDomain} {
		t.Run(name+" gets a certificate from the CA", func(t *testing.T) {
			before := pebble.Orders()
			leaf, err := handshake(t, addr, name, pebble.Roots())
			if err != nil {
				t.Fatal(err)
			}
			if err := leaf.VerifyHostname(name); err != nil {
				t.Error(err)
			}
			if got := pebble.Orders() - before; got != 1 {
				t.Errorf("%d orders, want 1", got)
			}
		})
	}
	if challenges.Load() == 0 {
		t.Error("the CA never made a TLS-ALPN-01 handshake")
	}
	t.Run("hello without SNI gets the apex certificate", func(t *testing.T) {
		before := pebble.Orders()
		if _, err := handshakeNoSNI(t, addr, acmeDomain, pebble.Roots()); err != nil {
			t.Fatal(err)
		}
		if pebble.Orders() != before {
			t.Error("apex certificate ordered again")
		}
	})
	for _, name := range []string{"zzz." + acmeDomain, "abc.example.com", "x.abc." + acmeDomain} {
		t.Run(name+" is refused without asking the CA", func(t *testing.T) {
			before := pebble.Orders()
			if _, err := handshake(t, addr, name, pebble.Roots()); err == nil {
				t.Fatal("handshake succeeded")
			}
			if pebble.Orders() != before {
				t.Errorf("the CA was asked for %s", name)
			}
		})
	}
}

func TestACMEServesCachedCertificatesAfterRestart(t *testing.T) {
	dir := t.TempDir()
	ln := reservePort(t)
	pebble := pebbletest.Start(t, ln.Addr().(*net.TCPAddr).Port, 0)
	first := newACME(t, inDir(dir), pebble, nil)
	addr := serveTLSOn(t, ln, certs.TLSConfig(first, []string{"h2", "http/1.1"}))
	name := "abc." + acmeDomain
	issued, err := handshake(t, addr, name, pebble.Roots())
	if err != nil {
		t.Fatal(err)
	}
	orders := pebble.Orders()

	second := newACME(t, inDir(dir), pebble, nil)
	addr2, _ := serveTLS(t, certs.TLSConfig(second, []string{"h2", "http/1.1"}))
	served, err := handshake(t, addr2, name, pebble.Roots())
	if err != nil {
		t.Fatal(err)
	}
	if served.SerialNumber.Cmp(issued.SerialNumber) != 0 {
		t.Errorf("second instance served serial %s, want the cached %s", served.SerialNumber, issued.SerialNumber)
	}
	if pebble.Orders() != orders {
		t.Errorf("second instance placed %d orders, want 0", pebble.Orders()-orders)
	}
}

func TestACMEObtainsCertificatesWithHTTP01(t *testing.T) {
	tlsLn, webLn := reservePort(t), reservePort(t)
	pebble := pebbletest.Start(t, tlsLn.Addr().(*net.TCPAddr).Port, webLn.Addr().(*net.TCPAddr).Port)
	a := newACME(t, inDir(t.TempDir()), pebble, nil)
	challenges := a.HTTPHandler(nil) // before any handshake: it enables HTTP-01
	var served atomic.Int64
	web := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/.well-known/acme-challenge/") {
			served.Add(1)
		}
		challenges.ServeHTTP(w, r)
	}))
	web.Listener.Close()
	web.Listener = webLn
	web.Start()
	t.Cleanup(web.Close)
	// The TLS listener does not offer acme-tls/1, so TLS-ALPN-01 fails and
	// autocert falls back to HTTP-01.
	addr := serveTLSOn(t, tlsLn, &tls.Config{GetCertificate: a.GetCertificate, NextProtos: []string{"http/1.1"}})

	name := "web." + acmeDomain
	leaf, err := handshake(t, addr, name, pebble.Roots())
	if err != nil {
		t.Fatal(err)
	}
	if err := leaf.VerifyHostname(name); err != nil {
		t.Error(err)
	}
	if served.Load() == 0 {
		t.Error("the CA never fetched an HTTP-01 challenge")
	}

	tests := []struct {
		name     string
		host     string
		path     string
		wantCode int
	}{
		{"challenge for an unreserved name is forbidden", "zzz." + acmeDomain, "/.well-known/acme-challenge/token", http.StatusForbidden},
		{"unknown challenge token is not found", name, "/.well-known/acme-challenge/token", http.StatusNotFound},
		{"other paths redirect to HTTPS", name, "/hook?a=1", http.StatusPermanentRedirect},
		// Pebble sends "Host: NAME:PORT"; the name is what is judged.
		{"challenge with a port in Host is judged by its name", net.JoinHostPort(name, "80"), "/.well-known/acme-challenge/token", http.StatusNotFound},
		{"challenge with a port in Host for an unreserved name is forbidden", net.JoinHostPort("zzz."+acmeDomain, "80"), "/.well-known/acme-challenge/token", http.StatusForbidden},
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, web.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tt.host
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantCode)
			}
		})
	}
}

func TestACMEFailureEndsHandshakeAndIsLogged(t *testing.T) {
	// The CA validates against a port that hangs up at once, as when the
	// name's DNS points elsewhere.
	wrong := reservePort(t)
	go func() {
		for {
			conn, err := wrong.Accept()
			if err != nil {
				return
			}
			conn.Close()
		}
	}()
	pebble := pebbletest.Start(t, wrong.Addr().(*net.TCPAddr).Port, 0)
	logs := &lockedBuffer{}
	a := newACME(t, inDir(t.TempDir()), pebble, logs)
	addr, _ := serveTLS(t, certs.TLSConfig(a, []string{"h2", "http/1.1"}))

	name := "abc." + acmeDomain
	if _, err := handshake(t, addr, name, pebble.Roots()); err == nil {
		t.Fatal("handshake succeeded without a certificate")
	}
	if out := logs.String(); !strings.Contains(out, "acme certificate unavailable") || !strings.Contains(out, "name="+name) || !strings.Contains(out, "reason=") {
		t.Errorf("failure not logged with name and reason; log:\n%s", out)
	}
	// autocert keeps a failed name for a minute: a provider's retries must
	// not each cost an order (Let's Encrypt limits failed validations).
	orders := pebble.Orders()
	if _, err := handshake(t, addr, name, pebble.Roots()); err == nil {
		t.Fatal("second handshake succeeded")
	}
	if pebble.Orders() != orders {
		t.Errorf("retry placed %d more orders, want 0", pebble.Orders()-orders)
	}
}

func TestACMEHangingCAEndsHandshakeWithinIssueTimeout(t *testing.T) {
	release := make(chan struct{})
	ca := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(ca.Close)
	t.Cleanup(func() { close(release) }) // before ca.Close, which waits for handlers

	logs := &lockedBuffer{}
	a, err := certs.NewACME(certs.ACMEConfig{
		Dir:          t.TempDir(),
		DirectoryURL: ca.URL + "/dir",
		HTTPClient:   ca.Client(),
		Policy:       certs.HostPolicy{Domain: acmeDomain},
		Logger:       slog.New(slog.NewTextHandler(logs, nil)),
		IssueTimeout: 300 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, certs.TLSConfig(a, []string{"h2", "http/1.1"}))
	start := time.Now()
	_, err = handshake(t, addr, acmeDomain, nil)
	if err == nil {
		t.Fatal("handshake succeeded")
	}
	// The client's own limit is 20 s; the server must give up long before.
	if elapsed := time.Since(start); elapsed > 10*time.Second {
		t.Errorf("handshake took %s with a 300ms issue timeout", elapsed)
	}
	if out := logs.String(); !strings.Contains(out, "name="+acmeDomain) || !strings.Contains(out, "not ready") {
		t.Errorf("timeout not logged with name and reason; log:\n%s", out)
	}
}

func TestNewACMEValidatesConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  certs.ACMEConfig
		want string
	}{
		{"cache directory is required", certs.ACMEConfig{Policy: certs.HostPolicy{Domain: acmeDomain}}, "cache directory"},
		{"domain is required", certs.ACMEConfig{Dir: "x"}, "domain is required"},
		{"single-label domain cannot have a public certificate", certs.ACMEConfig{Dir: "x", Policy: certs.HostPolicy{Domain: "localhost"}}, `"localhost" cannot have a public certificate`},
		{"negative issue timeout is refused", certs.ACMEConfig{Dir: "x", Policy: certs.HostPolicy{Domain: acmeDomain}, IssueTimeout: -time.Second}, "negative issue timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := certs.NewACME(tt.cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewACME = %v, want an error containing %q", err, tt.want)
			}
		})
	}
	if _, err := certs.NewACME(certs.ACMEConfig{Dir: "x", Policy: certs.HostPolicy{Domain: acmeDomain}}); err != nil {
		t.Errorf("defaults refused: %v", err)
	}
}

func TestACMEForSeveralNodesNeverOffersTLSALPN01(t *testing.T) {
	for _, tt := range []struct {
		name       string
		http01Only bool
		want       bool
	}{
		{"a single node answers TLS-ALPN-01 on its listener", false, true},
		{"a node of a cluster leaves it to HTTP-01, whose tokens all nodes share", true, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a, err := certs.NewACME(certs.ACMEConfig{Dir: t.TempDir(), HTTP01Only: tt.http01Only,
				Policy: certs.HostPolicy{Domain: acmeDomain, Reserved: reservedSet("abc")}})
			if err != nil {
				t.Fatal(err)
			}
			protos := certs.TLSConfig(a, []string{"relay/1", "h2", "http/1.1"}).NextProtos
			if got := slices.Contains(protos, "acme-tls/1"); got != tt.want {
				t.Fatalf("NextProtos = %v: offers acme-tls/1 = %v, want %v", protos, got, tt.want)
			}
		})
	}
}
