package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/internal/pebbletest"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

// acmeDomain has no public CA: only Pebble's DNS stub resolves it.
const acmeDomain = "relay.test"

// acmeRelay is how to start a relay server in ACME mode against Pebble;
// starting it twice with the same fields is a restart.
type acmeRelay struct {
	pebble     *pebbletest.Pebble
	dataDir    string
	database   string // PostgreSQL keeps the certificates; else dataDir/acme
	listen     string
	quicListen string
	httpListen string
	nodeName   string // with advertise, a node of a cluster on database
	advertise  string
}

// start runs the server until the returned stop (or the test's end).
func (r acmeRelay) start(t *testing.T) (*server.Server, func()) {
	t.Helper()
	logs := &relaytest.Buffer{}
	srv, err := server.New(context.Background(), server.Config{
		Domain:         acmeDomain,
		Listen:         r.listen,
		QUICListen:     r.quicListen,
		HTTPListen:     r.httpListen,
		DataDir:        r.dataDir,
		Database:       r.database,
		NodeName:       r.nodeName,
		Advertise:      r.advertise,
		ACMEEmail:      "ops@relay.test",
		ACMEDirectory:  r.pebble.DirectoryURL,
		ACMEHTTPClient: r.pebble.HTTPClient(),
		Heartbeat:      200 * time.Millisecond,
		MetricsListen:  "127.0.0.1:0",
		Logger:         slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatalf("start ACME server: %v", err)
	}
	srv.Start()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := srv.Shutdown(ctx); err != nil {
				t.Errorf("shutdown: %v", err)
			}
		})
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("relay server log:\n%s", logs.String())
		}
	})
	return srv, stop
}

// acmeAgentConfig is an agent that trusts only Pebble's issuing root, so
// connecting at all proves the apex certificate came from the ACME CA.
func acmeAgentConfig(srv *server.Server, pebble *pebbletest.Pebble, transport, token, name, target string) client.Config {
	return client.Config{
		Server:     srv.Addr(),
		QUICServer: srv.QUICAddr(),
		ServerName: acmeDomain,
		Token:      token,
		Name:       name,
		Transport:  transport,
		RootCAs:    pebble.Roots(),
		Target:     target,
		MaxBackoff: 200 * time.Millisecond,
		// The first handshake waits while the server obtains the apex
		// certificate, which under -race can outlast the default.
		QUICTimeout: 20 * time.Second,
	}
}

// pebbleTrustingClient is a provider's HTTPS client that trusts only
// Pebble's issuing root and sends every host to addr. Keep-alives are off
// so every request makes its own handshake and sees the certificate the
// server serves now.
func pebbleTrustingClient(t *testing.T, addr string, roots *x509.CertPool) *http.Client {
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
		ForceAttemptHTTP2: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 30 * time.Second}
}

// deliver posts through the tunnel, checks that the local app's answer
// came back, and returns the certificate the relay served.
func deliver(t *testing.T, hc *http.Client, url string) *x509.Certificate {
	t.Helper()
	body := `{"id":"evt_acme","type":"ping"}`
	resp, err := hc.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatalf("delivery to %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-App") != "yes" {
		t.Fatalf("delivery to %s: status %d, X-App %q: the app's answer did not come back", url, resp.StatusCode, resp.Header.Get("X-App"))
	}
	var e relaytest.Echoed
	if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
		t.Fatal(err)
	}
	if e.Body != body {
		t.Fatalf("app got body %q, want %q", e.Body, body)
	}
	return resp.TLS.PeerCertificates[0]
}

// acmeHandshake dials addr with SNI name, trusting only roots.
func acmeHandshake(addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	d := tls.Dialer{Config: &tls.Config{ServerName: name, RootCAs: roots}}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// TestACMEServerObtainsCertificatesAndReusesThemAfterRestart runs the relay
// in ACME mode against Pebble with real TLS-ALPN-01 validation on the
// relay's own TCP listener.
func TestACMEServerObtainsCertificatesAndReusesThemAfterRestart(t *testing.T) {
	for _, backend := range relaytest.Backends {
		for _, tr := range relaytest.Transports {
			t.Run(backend+"/"+tr, func(t *testing.T) { testACMEReuse(t, relaytest.NewBackend(t, backend), tr) })
		}
	}
}

func testACMEReuse(t *testing.T, b relaytest.Backend, tr string) {
	const tunnel = "hooks"
	// Pebble must know the relay's ports before the relay binds them,
	// and the restart must get the same ones.
	port, httpPort := relaytest.FreePort(t), relaytest.FreePort(t)
	pebble := pebbletest.Start(t, port, httpPort)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	relay := acmeRelay{
		pebble:     pebble,
		dataDir:    b.DataDir,
		database:   b.Database,
		listen:     addr,
		quicListen: addr,
		httpListen: net.JoinHostPort("127.0.0.1", strconv.Itoa(httpPort)),
	}
	srv, stopServer := relay.start(t)
	if n := pebble.Orders(); n != 0 {
		t.Fatalf("%d orders before any handshake, want none", n)
	}
	token := relaytest.CreateToken(t, srv, tunnel)
	app := relaytest.EchoApp(t)
	hc := pebbleTrustingClient(t, srv.Addr(), pebble.Roots())

	a, stopAgent := relaytest.ConnectAgent(t, acmeAgentConfig(srv, pebble, tr, token, tunnel, app.URL))
	if got := a.Transport(); got != tr {
		t.Fatalf("agent connected over %q, want %q", got, tr)
	}
	if n := pebble.Orders(); n != 1 {
		t.Fatalf("%d orders after the agent connected, want 1 (the apex)", n)
	}
	apex, err := acmeHandshake(srv.Addr(), acmeDomain, pebble.Roots())
	if err != nil {
		t.Fatalf("apex handshake: %v", err)
	}
	if err := apex.VerifyHostname(acmeDomain); err != nil {
		t.Fatal(err)
	}

	leaf := deliver(t, hc, srv.PublicURL(tunnel)+"/hook")
	if err := leaf.VerifyHostname(tunnel + "." + acmeDomain); err != nil {
		t.Fatalf("tunnel certificate: %v", err)
	}
	if n := pebble.Orders(); n != 2 {
		t.Fatalf("%d orders after the first delivery, want 2 (apex and %s)", n, tunnel)
	}
	m := relaytest.Scrape(t, metricsURL(srv))
	for name, c := range map[string]*x509.Certificate{acmeDomain: apex, tunnel + "." + acmeDomain: leaf} {
		if got := m.Value("relay_certificate_expiry_timestamp_seconds", map[string]string{"name": name}); got != float64(c.NotAfter.Unix()) {
			t.Errorf("relay_certificate_expiry_timestamp_seconds{name=%s} = %v, want %d (the ACME certificate's NotAfter)", name, got, c.NotAfter.Unix())
		}
	}

	if _, err := acmeHandshake(srv.Addr(), "nobody."+acmeDomain, pebble.Roots()); err == nil {
		t.Fatal("a name no token reserved got a certificate")
	}
	if n := pebble.Orders(); n != 2 {
		t.Fatalf("the CA was asked for a name no token reserved (%d orders, want 2)", n)
	}

	// Restart on the same data directory and ports: both
	// certificates come from the cache, none from the CA.
	stopAgent()
	stopServer()
	srv, _ = relay.start(t)
	relaytest.ConnectAgent(t, acmeAgentConfig(srv, pebble, tr, token, tunnel, app.URL))
	again := deliver(t, hc, srv.PublicURL(tunnel)+"/hook")
	if again.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("after restart %s has serial %s, want the cached %s", tunnel, again.SerialNumber, leaf.SerialNumber)
	}
	apexAgain, err := acmeHandshake(srv.Addr(), acmeDomain, pebble.Roots())
	if err != nil {
		t.Fatalf("apex handshake after restart: %v", err)
	}
	if apexAgain.SerialNumber.Cmp(apex.SerialNumber) != 0 {
		t.Errorf("after restart the apex has serial %s, want the cached %s", apexAgain.SerialNumber, apex.SerialNumber)
	}
	if n := pebble.Orders(); n != 2 {
		t.Errorf("restart placed %d new orders, want 0", n-2)
	}
	if b.Database != "" {
		if _, err := os.Stat(filepath.Join(b.DataDir, "acme")); !os.IsNotExist(err) {
			t.Errorf("with a database the certificates went to files too: %v", err)
		}
		if _, err := b.Open(t).CertCache().Get(context.Background(), acmeDomain); err != nil {
			t.Errorf("the apex certificate is not in PostgreSQL: %v", err)
		}
	}
}

// TestACMEServerObtainsCertificateWithHTTP01 has Pebble's TLS-ALPN-01
// check hit a port that hangs up, so autocert falls back to HTTP-01, which
// the relay answers on its HTTPListen. Pebble sends "Host: NAME:PORT" (a
// real CA on port 80 usually sends the bare name); the relay judges the
// name. A transparent proxy on Pebble's HTTP port counts the answers.
func TestACMEServerObtainsCertificateWithHTTP01(t *testing.T) {
	const tunnel = "web"
	hangup, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var tlsALPNTries atomic.Int64
	var hangupDone sync.WaitGroup
	hangupDone.Go(func() {
		for {
			conn, err := hangup.Accept()
			if err != nil {
				return
			}
			tlsALPNTries.Add(1)
			conn.Close()
		}
	})
	t.Cleanup(func() {
		hangup.Close()
		hangupDone.Wait()
	})
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(relaytest.FreePort(t)))
	challenges := watchChallenges(t, httpAddr)
	pebble := pebbletest.Start(t, hangup.Addr().(*net.TCPAddr).Port, challenges.port())

	srv, _ := acmeRelay{
		pebble:     pebble,
		dataDir:    t.TempDir(),
		listen:     "127.0.0.1:0",
		quicListen: "off",
		httpListen: httpAddr,
	}.start(t)

	relaytest.CreateToken(t, srv, tunnel)
	name := tunnel + "." + acmeDomain
	leaf, err := acmeHandshake(srv.Addr(), name, pebble.Roots())
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	if err := leaf.VerifyHostname(name); err != nil {
		t.Fatal(err)
	}
	if tlsALPNTries.Load() == 0 {
		t.Error("the CA never tried TLS-ALPN-01, so the fallback was not exercised")
	}
	if challenges.answered.Load() == 0 {
		t.Errorf("the relay's HTTP listener never answered an HTTP-01 challenge (%d refused)", challenges.refused.Load())
	}

	tests := []struct {
		name     string
		host     string
		path     string
		wantCode int
		wantLoc  string
	}{
		{"challenge for an unreserved name is forbidden", "nobody." + acmeDomain, "/.well-known/acme-challenge/x", http.StatusForbidden, ""},
		{"unknown challenge token is not found", name, "/.well-known/acme-challenge/x", http.StatusNotFound, ""},
		// The redirect keeps the HTTPS port, which here is not 443.
		{"other paths redirect to HTTPS", name, "/hook?a=1", http.StatusPermanentRedirect, "https://" + net.JoinHostPort(name, mustPort(t, srv.Addr())) + "/hook?a=1"},
		{"challenge with a port in Host is judged by its name", net.JoinHostPort(name, "80"), "/.well-known/acme-challenge/x", http.StatusNotFound, ""},
		{"challenge with a port in Host for an unreserved name is forbidden", net.JoinHostPort("nobody."+acmeDomain, "80"), "/.well-known/acme-challenge/x", http.StatusForbidden, ""},
	}
	noRedirect := &http.Client{
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       10 * time.Second,
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, "http://"+srv.HTTPAddr()+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Host = tt.host
			resp, err := noRedirect.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.wantCode)
			}
			if got := resp.Header.Get("Location"); got != tt.wantLoc {
				t.Errorf("Location %q, want %q", got, tt.wantLoc)
			}
		})
	}
}

// challengeWatch stands on the CA's HTTP-01 port in front of a relay's
// HTTP listener. It passes requests on unchanged, Host and all, and counts
// the challenges the relay answered and those it refused.
type challengeWatch struct {
	answered, refused atomic.Int64
	srv               *httptest.Server
}

func watchChallenges(t *testing.T, relayHTTP string) *challengeWatch {
	w := &challengeWatch{}
	w.srv = httptest.NewServer(&httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(&url.URL{Scheme: "http", Host: relayHTTP})
			pr.Out.Host = pr.In.Host
		},
		ModifyResponse: func(resp *http.Response) error {
			if strings.HasPrefix(resp.Request.URL.Path, "/.well-known/acme-challenge/") {
				if resp.StatusCode == http.StatusOK {
					w.answered.Add(1)
				} else {
					w.refused.Add(1)
				}
			}
			return nil
		},
	})
	t.Cleanup(w.srv.Close)
	return w
}

func (w *challengeWatch) port() int { return w.srv.Listener.Addr().(*net.TCPAddr).Port }

func mustPort(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}
