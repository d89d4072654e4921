// Package pebbletest runs Pebble, Let's Encrypt's test ACME server, inside
// a test process. Validation is real: Pebble's validation authority dials
// the test's own TLS and HTTP listeners on 127.0.0.1, every name resolving
// there through a DNS stub, so a test proves that challenges are answered,
// not merely that a client speaks ACME.
package pebbletest

import (
	"bytes"
	"crypto/x509"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// Where ACME clients create orders on Pebble, and finalize them (send
// the CSR) once every authorization is valid.
const (
	newOrderPath      = "/order-plz"
	orderFinalizePath = "/finalize-order/"
)

// Pebble is a running in-process ACME CA.
type Pebble struct {
	// DirectoryURL is the ACME directory to give the client.
	DirectoryURL string

	srv       *httptest.Server
	ca        *ca.CAImpl
	orders    atomic.Int64
	finalized atomic.Int64
}

// Start runs Pebble until the test ends. Its validation authority checks
// TLS-ALPN-01 on 127.0.0.1:tlsPort and HTTP-01 on 127.0.0.1:httpPort, for
// every name; its HTTP-01 request carries "Host: NAME:httpPort", a port
// that Let's Encrypt leaves out on port 80. Pebble's log is printed only
// if the test fails.
func Start(t testing.TB, tlsPort, httpPort int) *Pebble {
	t.Helper()
	logs := &lockedBuffer{}
	logger := log.New(logs, "pebble ", log.Lmicroseconds)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("pebble log:\n%s", logs.String())
		}
	})

	resolver := startDNS(t)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "default profile"},
	})
	var front wfe.WebFrontEndImpl
	// Pebble reads its switches from the environment while being built.
	withEnv(map[string]string{
		"PEBBLE_VA_NOSLEEP":      "1", // validate at once, not after up to 5 s
		"PEBBLE_VA_ALWAYS_VALID": "0", // really dial the listeners
		"PEBBLE_WFE_NONCEREJECT": "0", // no random badNonce retries
		"PEBBLE_AUTHZREUSE":      "0", // every order validates again
	}, func() {
		validator := va.New(logger, httpPort, tlsPort, false, resolver, store)
		front = wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 0, 0)
	})

	p := &Pebble{ca: authority}
	api := front.Handler()
	p.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var count *atomic.Int64
		want := http.StatusOK
		switch {
		case r.Method != http.MethodPost:
		case r.URL.Path == newOrderPath:
			count, want = &p.orders, http.StatusCreated
		case strings.HasPrefix(r.URL.Path, orderFinalizePath):
			count = &p.finalized
		}
		if count == nil {
			api.ServeHTTP(w, r)
			return
		}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		api.ServeHTTP(sw, r)
		if sw.status == want {
			count.Add(1)
		}
	}))
	// Clients that outlive the test (autocert deactivates authorizations
	// in the background) make handshake errors; keep them in Pebble's log.
	p.srv.Config.ErrorLog = logger
	p.srv.StartTLS()
	t.Cleanup(p.srv.Close)
	p.DirectoryURL = p.srv.URL + wfe.DirectoryPath
	return p
}

// HTTPClient talks to Pebble's API (it trusts the API's test certificate,
// not the issuing root).
func (p *Pebble) HTTPClient() *http.Client { return p.srv.Client() }

// Roots holds only the root that issues Pebble's certificates.
func (p *Pebble) Roots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.ca.GetRootCert(0).Cert)
	return pool
}

// Orders counts the orders Pebble created: one per attempt to obtain a
// certificate, none for a certificate served from a cache.
func (p *Pebble) Orders() int { return int(p.orders.Load()) }

// Certificates counts the orders finalized: one per certificate issued,
// however many orders failed validation on the way.
func (p *Pebble) Certificates() int { return int(p.finalized.Load()) }

// startDNS serves, over TCP as Pebble's resolver asks, A 127.0.0.1 for every
// name and no other records (Pebble dials the first address it gets and
// asks AAAA first, so AAAA must be empty).
func startDNS(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("dns stub: %v", err)
	}
	started := make(chan struct{})
	srv := &dns.Server{
		Listener:          ln,
		Net:               "tcp",
		NotifyStartedFunc: func() { close(started) },
		Handler: dns.HandlerFunc(func(w dns.ResponseWriter, q *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(q)
			for _, question := range q.Question {
				if question.Qtype == dns.TypeA {
					m.Answer = append(m.Answer, &dns.A{
						Hdr: dns.RR_Header{Name: question.Name, Rrtype: dns.TypeA, Class: dns.ClassINET},
						A:   net.IPv4(127, 0, 0, 1),
					})
				}
			}
			w.WriteMsg(m)
		}),
	}
	served := make(chan error, 1)
	go func() { served <- srv.ActivateAndServe() }()
	select {
	case <-started:
	case err := <-served:
		t.Fatalf("dns stub: %v", err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		<-served
	})
	return ln.Addr().String()
}

var envMu sync.Mutex

// withEnv runs build with vars set and restores them after. Unlike
// t.Setenv it allows parallel tests; only Pebble reads these variables.
func withEnv(vars map[string]string, build func()) {
	envMu.Lock()
	defer envMu.Unlock()
	for k, v := range vars {
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	build()
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

// lockedBuffer collects Pebble's log, which its goroutines write to until
// after the test ends.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
