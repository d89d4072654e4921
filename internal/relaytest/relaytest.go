// Package relaytest starts what an end-to-end test of relay needs, all on
// loopback: a dev-mode relay server, agents connected to it, local apps,
// and an HTTPS client that plays the provider. Every helper that starts
// something stops it when the test ends.
package relaytest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/server"
)

// Transports are the agent transports every end-to-end test runs over.
var Transports = []string{"quic", "tcp"}

// StartServer runs a dev-mode relay server on loopback and stops it when
// the test ends. mods change the configuration before it starts.
func StartServer(t testing.TB, mods ...func(*server.Config)) *server.Server {
	t.Helper()
	cfg := devConfig("127.0.0.1:0", t.TempDir())
	for _, m := range mods {
		m(&cfg)
	}
	return StartServerWith(t, cfg)
}

// devConfig is a dev-mode server at listen with its data in dir, as every
// test server (a cluster's nodes too) starts from.
func devConfig(listen, dir string) server.Config {
	// Liveness timings are the release defaults: a test under -race on a
	// loaded machine can starve a goroutine for seconds, and only a test
	// about noticing a dead peer should shorten them.
	// The TLS handshake and headers get a minute, not the release 10 s:
	// a burst of 200 handshakes under -race with every CPU busy can take
	// longer, and only the slowloris test is about that limit.
	return server.Config{Dev: true, Listen: listen, DataDir: dir, ReadHeaderTimeout: time.Minute}
}

// StartServerWith runs a relay server with exactly cfg.
func StartServerWith(t testing.TB, cfg server.Config) *server.Server {
	t.Helper()
	srv := startServer(t, "server", cfg)
	t.Cleanup(func() { shutdown(srv) })
	return srv
}

// startServer runs a relay server with exactly cfg, failing the test
// when it cannot start; stopping it is the caller's.
func startServer(t testing.TB, what string, cfg server.Config) *server.Server {
	t.Helper()
	srv, err := server.New(context.Background(), cfg)
	if err != nil {
		t.Fatalf("start %s: %v", what, err)
	}
	srv.Start()
	return srv
}

// shutdown stops srv, giving it 10 s to drain.
func shutdown(srv *server.Server) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	srv.Shutdown(ctx)
}

// CreateToken makes a token for names on srv and returns its secret.
func CreateToken(t testing.TB, srv *server.Server, names ...string) string {
	t.Helper()
	_, secret, err := srv.Store().CreateToken(context.Background(), names...)
	if err != nil {
		t.Fatalf("create token: %v", err)
	}
	return secret
}

// AgentConfig is an agent for srv that trusts its dev CA, with short
// reconnect delays.
func AgentConfig(srv *server.Server, transport, token, name, target string) client.Config {
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

// RunAgent starts an agent and waits until it is connected; the agent
// stops when the test ends.
func RunAgent(t testing.TB, cfg client.Config) *client.Agent {
	t.Helper()
	a, _ := ConnectAgent(t, cfg)
	return a
}

// ConnectAgent starts an agent, waits until it is connected, and returns
// a stop that waits for Run to return (also called when the test ends).
func ConnectAgent(t testing.TB, cfg client.Config) (*client.Agent, func()) {
	t.Helper()
	a, errc, stop := startAgent(t, cfg)
	select {
	case <-a.Ready():
	case err := <-errc:
		t.Fatalf("agent stopped before connecting: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("agent did not connect in 30s")
	}
	return a, stop
}

// StartAgent starts an agent without waiting; errc carries Run's result.
// Without a Console of its own, the agent's console is logged when the
// test fails.
func StartAgent(t testing.TB, cfg client.Config) (*client.Agent, <-chan error) {
	t.Helper()
	a, errc, _ := startAgent(t, cfg)
	return a, errc
}

func startAgent(t testing.TB, cfg client.Config) (*client.Agent, <-chan error, func()) {
	t.Helper()
	if cfg.Console == nil {
		console := &Buffer{}
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
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case <-done:
			case <-time.After(15 * time.Second):
				var stacks strings.Builder
				pprof.Lookup("goroutine").WriteTo(&stacks, 1)
				t.Errorf("agent did not stop within 15s; goroutines:\n%s", stacks.String())
			}
		})
	}
	t.Cleanup(stop)
	return a, errc, stop
}

// ProviderClient is an HTTPS client that trusts only srv's dev CA and
// sends every NAME.localhost connection to srv's address.
func ProviderClient(t testing.TB, srv *server.Server) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(srv.DevCAPath())
	if err != nil {
		t.Fatal(err)
	}
	return HTTPSClient(t, srv.Addr(), pem)
}

// ProviderClientHTTP1 is ProviderClient speaking HTTP/1.1 only, one
// connection per request in flight. A burst test on a starved CPU needs it:
// Go's HTTP/2 server drops a connection whose client has not acknowledged
// its SETTINGS within two seconds (a constant), failing every request on it
// for reasons that are not relay's.
func ProviderClientHTTP1(t testing.TB, srv *server.Server) *http.Client {
	t.Helper()
	hc := ProviderClient(t, srv)
	tr := hc.Transport.(*http.Transport)
	tr.ForceAttemptHTTP2 = false
	tr.TLSClientConfig.NextProtos = []string{"http/1.1"}
	tr.MaxIdleConnsPerHost = 256
	return hc
}

// HTTPSClient trusts only the CA certificates in caPEM and sends every
// connection to addr, whatever the URL's host: a provider for a relay
// server that runs as a process.
func HTTPSClient(t testing.TB, addr string, caPEM []byte) *http.Client {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
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

// TunnelURL is the public URL of path on name's tunnel.
func TunnelURL(srv *server.Server, name, path string) string {
	return strings.TrimSuffix(srv.PublicURL(name), "/") + path
}

// WaitFor polls cond (a state another goroutine changes that has no
// channel to wait on) until it holds, failing the test after 15 s.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	waitFor(t, 15*time.Second, 10*time.Millisecond, what, cond)
}

// WaitForWithin is WaitFor with a deadline of within, for a state that
// takes longer to come (containers, processes on a busy machine). It polls
// within/600 apart, never closer than 10 ms, so a condition that is costly
// to check (one that runs a command) runs no more often than it is useful.
func WaitForWithin(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	waitFor(t, within, max(within/600, 10*time.Millisecond), what, cond)
}

func waitFor(t testing.TB, within, every time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(every)
	}
}

// App serves h on loopback until the test ends and returns its URL.
func App(t testing.TB, h http.HandlerFunc) string {
	app := httptest.NewServer(h)
	t.Cleanup(app.Close)
	return app.URL
}

// Echoed is what EchoApp answers: what it received.
type Echoed struct {
	Method, URI, Host, Body string
	Headers                 http.Header
}

// EchoApp answers 201 with what it received (as Echoed JSON) and
// X-App: yes, so a test can compare both ends.
func EchoApp(t testing.TB) *httptest.Server {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("X-App", "yes")
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(map[string]any{
			"method": r.Method, "uri": r.RequestURI, "host": r.Host, "body": string(body),
			"headers": r.Header,
		})
	}))
	t.Cleanup(app.Close)
	return app
}

// Buffer is a console or log a test reads while another goroutine writes.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// PatternReader yields N deterministic bytes without holding them.
type PatternReader struct{ N, off int64 }

func (p *PatternReader) Read(b []byte) (int, error) {
	if p.off >= p.N {
		return 0, io.EOF
	}
	if int64(len(b)) > p.N-p.off {
		b = b[:p.N-p.off]
	}
	for i := range b {
		b[i] = byte((p.off + int64(i)) * 7 % 251)
	}
	p.off += int64(len(b))
	return len(b), nil
}

// PatternSum is the SHA-256 of what a PatternReader of n bytes yields.
func PatternSum(n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, &PatternReader{N: n})
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

// BuildRelay builds the relay binary into the test's temp dir.
func BuildRelay(t testing.TB) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "relay")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/relaytunnel/relay/cmd/relay")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build relay: %v\n%s", err, out)
	}
	return bin
}

// FreePort is a port on loopback that is free for both TCP and UDP a
// moment ago. It is drawn from below Linux's ephemeral range (32768 and
// up), where the kernel never puts a client socket of its own choosing:
// a port taken from the ephemeral range could be handed to some QUIC
// client's UDP socket between this pick and the server's bind, and the
// server then failed with "address already in use" on a busy machine.
func FreePort(t testing.TB) int {
	t.Helper()
	for range 200 {
		port := 20000 + rand.IntN(32768-20000)
		addr := fmt.Sprintf("127.0.0.1:%d", port)
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			continue
		}
		pc, err := net.ListenPacket("udp", addr)
		ln.Close()
		if err != nil {
			continue
		}
		pc.Close()
		return port
	}
	t.Fatal("no port free for both TCP and UDP on 127.0.0.1 in 20000-32767")
	return 0
}

// WaitListening waits until something accepts TCP connections on addr.
func WaitListening(t testing.TB, addr string) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never listened", addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tokenPattern is a token secret as relay prints it.
var tokenPattern = regexp.MustCompile(`relay_[a-z2-7]+`)

// FindToken is the first token secret in out, or "" when there is none.
func FindToken(out string) string { return tokenPattern.FindString(out) }

// CLIToken runs `bin token create args...` and returns the token secret
// it prints.
func CLIToken(t testing.TB, bin string, args ...string) string {
	t.Helper()
	out, err := exec.Command(bin, append([]string{"token", "create"}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("token create %s: %v %s", strings.Join(args, " "), err, out)
	}
	return FindToken(string(out))
}

// StartServerAt runs a dev-mode server on dir and addr, as a restart of
// an earlier one would.
func StartServerAt(t testing.TB, dir, addr string) *server.Server {
	return StartServer(t, func(c *server.Config) { c.DataDir = dir; c.Listen = addr })
}

// Post sends body as JSON and returns the response with its JSON body
// decoded (nil when it is not JSON).
func Post(t testing.TB, hc *http.Client, url, body string) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := hc.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m map[string]any
	json.NewDecoder(resp.Body).Decode(&m)
	return resp, m
}

// CPU is this process's CPU time (user + system) since StartCPU; a
// benchmark reports it per operation, since on a shared machine it varies
// far less than wall-clock time.
type CPU struct{ start time.Duration }

// StartCPU starts counting.
func StartCPU() CPU { return CPU{processCPU()} }

// Report adds cpu-µs/op to b's results.
func (c CPU) Report(b *testing.B) {
	b.ReportMetric(float64((processCPU()-c.start).Microseconds())/float64(b.N), "cpu-µs/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
