package server_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/server"
)

var transports = []string{"quic", "tcp"}

// startServer runs a dev-mode relay server on loopback and stops it when
// the test ends.
func startServer(t testing.TB, mods ...func(*server.Config)) *server.Server {
	t.Helper()
	cfg := server.Config{Dev: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), Heartbeat: time.Second}
	for _, m := range mods {
		m(&cfg)
	}
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start server: %v", err)
	}
	srv.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
	return srv
}

func createToken(t testing.TB, srv *server.Server, names ...string) string {
	t.Helper()
	_, secret, err := srv.Store().CreateToken(context.Background(), names...)
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return secret
}

func agentConfig(srv *server.Server, transport, token, name, target string) client.Config {
	return client.Config{
		Server:      srv.Addr(),
		QUICServer:  srv.QUICAddr(),
		ServerName:  srv.Domain(),
		Token:       token,
		Name:        name,
		Transport:   transport,
		CAFile:      srv.DevCAPath(),
		Target:      target,
		MaxBackoff:  200 * time.Millisecond,
		QUICTimeout: time.Second,
	}
}

// runAgent starts an agent and waits until it is connected; the agent
// stops when the test ends.
func runAgent(t testing.TB, cfg client.Config) *client.Agent {
	t.Helper()
	a, errc := startAgent(t, cfg)
	select {
	case <-a.Ready():
	case err := <-errc:
		t.Fatalf("agent stopped before connecting: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("agent did not connect in 15s")
	}
	return a
}

// startAgent starts an agent without waiting; errc carries Run's result.
func startAgent(t testing.TB, cfg client.Config) (*client.Agent, <-chan error) {
	t.Helper()
	if cfg.Console == nil {
		console := &syncBuffer{}
		cfg.Console = console
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("agent console:\n%s", console.String())
			}
		})
	}
	a, err := client.New(cfg)
	if err != nil {
		t.Fatalf("new agent: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		errc <- a.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			t.Error("agent did not stop within 15s")
		}
	})
	return a, errc
}

// providerClient is an HTTPS client that trusts only the dev CA and sends
// every NAME.localhost connection to the server's address.
func providerClient(t testing.TB, srv *server.Server) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(srv.DevCAPath())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	addr := srv.Addr()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		MaxIdleConnsPerHost: 64,
		ForceAttemptHTTP2:   true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

func tunnelURL(srv *server.Server, name, path string) string {
	return strings.TrimSuffix(srv.PublicURL(name), "/") + path
}

// waitFor polls cond (a state another goroutine changes that has no
// channel to wait on) until it holds or the deadline passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func isErr(err, target error) bool { return errors.Is(err, target) }

// watchHeap samples the heap in use until the returned function is called,
// which reports the peak.
func watchHeap(t testing.TB) func() uint64 {
	runtime.GC()
	stop := make(chan struct{})
	done := make(chan uint64)
	go func() {
		var peak uint64
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var m runtime.MemStats
			runtime.ReadMemStats(&m)
			peak = max(peak, m.HeapInuse)
			select {
			case <-stop:
				done <- peak
				return
			case <-tick.C:
			}
		}
	}()
	var once sync.Once
	var peak uint64
	f := func() uint64 {
		once.Do(func() { close(stop); peak = <-done })
		return peak
	}
	t.Cleanup(func() { f() })
	return f
}

func httptestServer(t testing.TB, h http.HandlerFunc) string {
	app := httptest.NewServer(h)
	t.Cleanup(app.Close)
	return app.URL
}
