package server_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

func TestSmallPostRoundTrip(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			app := relaytest.EchoApp(t)
			a := relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "stripe-dev"), "stripe-dev", app.URL))
			if got := a.Transport(); got != tr {
				t.Fatalf("agent connected over %q, want %q", got, tr)
			}
			body := `{"id":"evt_1","type":"payment_intent.succeeded","amount":  100}`
			req, _ := http.NewRequest("POST", relaytest.TunnelURL(srv, "stripe-dev", "/webhooks?a=1&b=%2F"), strings.NewReader(body))
			req.Header.Set("Stripe-Signature", "t=1,v1=abc")
			req.Header.Set("Content-Type", "application/json")
			resp, err := relaytest.ProviderClient(t, srv).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusCreated || resp.Header.Get("X-App") != "yes" {
				t.Fatalf("status %d, X-App %q: the app's answer did not come back", resp.StatusCode, resp.Header.Get("X-App"))
			}
			var e relaytest.Echoed
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if e.Body != body {
				t.Errorf("app got body %q, want it byte for byte %q", e.Body, body)
			}
			if e.URI != "/webhooks?a=1&b=%2F" {
				t.Errorf("app got URI %q", e.URI)
			}
			if got := e.Headers.Get("Stripe-Signature"); got != "t=1,v1=abc" {
				t.Errorf("Stripe-Signature = %q", got)
			}
			if got := e.Headers.Get("X-Forwarded-Proto"); got != "https" {
				t.Errorf("X-Forwarded-Proto = %q", got)
			}
			if got := e.Headers.Get("X-Forwarded-For"); got != "127.0.0.1" {
				t.Errorf("X-Forwarded-For = %q", got)
			}
			if got, want := e.Headers.Get("X-Forwarded-Host"), strings.TrimPrefix(srv.PublicURL("stripe-dev"), "https://"); got != want {
				t.Errorf("X-Forwarded-Host = %q, want %q", got, want)
			}
			if e.Host != strings.TrimPrefix(app.URL, "http://") {
				t.Errorf("app saw Host %q, want the local target's", e.Host)
			}
		})
	}
}

func TestLargeBodiesStreamWithBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("100 MB bodies")
	}
	const size = 100 << 20
	want := relaytest.PatternSum(size)
	// The peak measures what is held, not how far the collector lags on
	// a busy machine: a tight GC target keeps garbage out of the figure
	// (a body buffered whole would still be 100 MB of live heap).
	defer debug.SetGCPercent(debug.SetGCPercent(25))
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) { c.MaxBody = 200 << 20 })
			app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == "POST" {
					h := sha256.New()
					n, _ := io.Copy(h, r.Body)
					fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
					return
				}
				w.Header().Set("Content-Length", fmt.Sprint(size))
				io.Copy(w, &relaytest.PatternReader{N: size})
			}))
			t.Cleanup(app.Close)
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "big"), "big", app.URL))
			hc := relaytest.ProviderClient(t, srv)
			mem := relaytest.WatchHeap(t)

			resp, err := hc.Post(relaytest.TunnelURL(srv, "big", "/upload"), "application/octet-stream", &relaytest.PatternReader{N: size})
			if err != nil {
				t.Fatal(err)
			}
			got, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if wantS := fmt.Sprintf("%d %x", size, want); string(got) != wantS {
				t.Fatalf("upload: app saw %q, want %q", got, wantS)
			}

			resp, err = hc.Get(relaytest.TunnelURL(srv, "big", "/download"))
			if err != nil {
				t.Fatal(err)
			}
			h := sha256.New()
			n, err := io.Copy(h, resp.Body)
			resp.Body.Close()
			if err != nil || n != size || !bytes.Equal(h.Sum(nil), want[:]) {
				t.Fatalf("download: %d bytes, err %v, checksum match %v", n, err, bytes.Equal(h.Sum(nil), want[:]))
			}
			peak := mem()
			t.Logf("peak heap in use while moving 2 x 100 MB: %.1f MB", float64(peak)/(1<<20))
			if peak > 48<<20 {
				t.Fatalf("peak heap %d MB: bodies are being buffered, not streamed", peak>>20)
			}
		})
	}
}

// TestConcurrentDeliveriesOnOneTunnel sends a burst of 200 deliveries at
// once; with RELAY_STRESS the CPUs are busy as well. Every one must be
// answered by the app over the one session it started on.
func TestConcurrentDeliveriesOnOneTunnel(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			relaytest.Stress(t)
			srv := relaytest.StartServer(t)
			app := relaytest.EchoApp(t)
			console := &relaytest.Buffer{}
			cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "busy"), "busy", app.URL)
			cfg.Console = console
			// The app shares two starved CPUs with 200 deliveries under
			// -race: give it nearly the provider client's minute, not the
			// release 30 s, before the agent answers 504 for it.
			cfg.Timeout = 55 * time.Second
			a := relaytest.RunAgent(t, cfg)
			session := a.Welcome().SessionID
			hc := relaytest.ProviderClientHTTP1(t, srv)
			const n = 200
			var wg sync.WaitGroup
			errs := make(chan error, n)
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					body := fmt.Sprintf(`{"n":%d}`, i)
					resp, err := hc.Post(relaytest.TunnelURL(srv, "busy", fmt.Sprintf("/hook/%d", i)), "application/json", strings.NewReader(body))
					if err != nil {
						errs <- err
						return
					}
					defer resp.Body.Close()
					var e relaytest.Echoed
					json.NewDecoder(resp.Body).Decode(&e)
					if resp.StatusCode != http.StatusCreated || e.Body != body || e.URI != fmt.Sprintf("/hook/%d", i) {
						errs <- fmt.Errorf("delivery %d: status %d, body %q, uri %q (%s)", i, resp.StatusCode, e.Body, e.URI, resp.Header.Get("X-Relay-Error"))
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if c := console.String(); strings.Contains(c, "connection lost") || a.Welcome().SessionID != session {
				t.Fatalf("the session was dropped during the burst:\n%s", c)
			}
		})
	}
}

func TestTwoTunnelsAreIsolated(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			appFor := func(id string) *httptest.Server {
				app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, id) }))
				t.Cleanup(app.Close)
				return app
			}
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "alpha"), "alpha", appFor("alpha-app").URL))
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "beta"), "beta", appFor("beta-app").URL))
			hc := relaytest.ProviderClient(t, srv)
			for _, name := range []string{"alpha", "beta", "alpha"} {
				resp, err := hc.Get(relaytest.TunnelURL(srv, name, "/"))
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if string(b) != name+"-app" {
					t.Fatalf("%s reached %q", name, b)
				}
			}
		})
	}
}

func TestProviderErrors(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) { c.MaxBody = 1 << 20 })
			hc := relaytest.ProviderClient(t, srv)
			release := make(chan struct{})
			slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			t.Cleanup(slow.Close)
			t.Cleanup(func() { close(release) })
			down := closedPort(t)
			app := relaytest.EchoApp(t)

			slowCfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "slow"), "slow", slow.URL)
			slowCfg.Timeout = 300 * time.Millisecond
			relaytest.RunAgent(t, slowCfg)
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "down"), "down", down))
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "ok"), "ok", app.URL))
			relaytest.CreateToken(t, srv, "offline")
			// Queueing off (relay connect --no-queue): offline means 503.
			if err := srv.Store().SetQueueing(context.Background(), "offline", false); err != nil {
				t.Fatal(err)
			}

			tests := []struct {
				name       string
				do         func() (*http.Response, error)
				wantStatus int
				wantCode   string
			}{
				{"an unknown name is 404", func() (*http.Response, error) {
					return hc.Post(relaytest.TunnelURL(srv, "nobody", "/"), "text/plain", strings.NewReader("x"))
				}, 404, "unknown_tunnel"},
				{"a reserved name with no agent and queueing off is 503 with Retry-After", func() (*http.Response, error) {
					return hc.Post(relaytest.TunnelURL(srv, "offline", "/"), "text/plain", strings.NewReader("x"))
				}, 503, "tunnel_offline"},
				{"a local app that refuses connections is 502", func() (*http.Response, error) {
					return hc.Post(relaytest.TunnelURL(srv, "down", "/"), "text/plain", strings.NewReader("x"))
				}, 502, "local_app_unreachable"},
				{"a local app that is too slow is 504", func() (*http.Response, error) {
					return hc.Post(relaytest.TunnelURL(srv, "slow", "/"), "text/plain", strings.NewReader("x"))
				}, 504, "local_app_timeout"},
				{"a body over the limit by Content-Length is 413", func() (*http.Response, error) {
					return hc.Post(relaytest.TunnelURL(srv, "ok", "/"), "text/plain", bytes.NewReader(make([]byte, 2<<20)))
				}, 413, "body_too_large"},
				{"a chunked body that grows over the limit is 413", func() (*http.Response, error) {
					return hc.Post(relaytest.TunnelURL(srv, "ok", "/"), "text/plain", io.MultiReader(&relaytest.PatternReader{N: 3 << 20}))
				}, 413, "body_too_large"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					resp, err := tt.do()
					if err != nil {
						t.Fatal(err)
					}
					defer resp.Body.Close()
					var e struct{ Error, Message string }
					json.NewDecoder(resp.Body).Decode(&e)
					if resp.StatusCode != tt.wantStatus || e.Error != tt.wantCode || e.Message == "" {
						t.Fatalf("got %d %+v, want %d %s with a message", resp.StatusCode, e, tt.wantStatus, tt.wantCode)
					}
					if tt.wantStatus == 503 && resp.Header.Get("Retry-After") == "" {
						t.Fatal("503 without Retry-After")
					}
				})
			}
			// The tunnel still serves after all of that.
			resp, err := hc.Post(relaytest.TunnelURL(srv, "ok", "/"), "text/plain", strings.NewReader("still here"))
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("after the errors: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}

// closedPort is an http URL on which nothing listens.
func closedPort(t testing.TB) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "http://" + addr
}

// rawConn is a provider's TLS connection to name's tunnel on srv, for
// requests no well-behaved client sends.
func rawConn(t *testing.T, srv *server.Server, name string) *tls.Conn {
	t.Helper()
	hc := relaytest.ProviderClient(t, srv)
	conf := hc.Transport.(*http.Transport).TLSClientConfig.Clone()
	conf.ServerName = name + ".localhost"
	conf.NextProtos = []string{"http/1.1"}
	c, err := tls.Dial("tcp", srv.Addr(), conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(time.Minute)) // a hung test fails, it does not hang
	return c
}

// answer reads the response to what was written on c and its JSON error.
func answer(t *testing.T, c net.Conn) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	defer resp.Body.Close()
	var e struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&e)
	return resp, e.Error
}

// consoleAgent runs an agent for name whose console the test reads.
func consoleAgent(t *testing.T, srv *server.Server, tr, name, target string, mods ...func(*client.Config)) *relaytest.Buffer {
	t.Helper()
	cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, name), name, target)
	console := &relaytest.Buffer{}
	cfg.Console = console
	for _, m := range mods {
		m(&cfg)
	}
	relaytest.RunAgent(t, cfg)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("agent console:\n%s", console.String())
		}
	})
	return console
}

func TestRelaysOwnHeadersFromAProviderNeverReachTheApp(t *testing.T) {
	forged := http.Header{
		"X-Relay-Replay-Of": {"1"}, "X-Relay-Error": {"local_app_error"}, "X-Relay-Delivery": {"dlv_forged"},
		"X-Real-Ip": {"6.6.6.6"}, "X-Forwarded-For": {"6.6.6.6"}, "Forwarded": {"for=6.6.6.6"},
	}
	check := func(t *testing.T, e relaytest.Echoed) {
		t.Helper()
		for k := range e.Headers {
			if strings.HasPrefix(strings.ToLower(k), "x-relay-") || k == "Forwarded" {
				t.Errorf("the app got %s: %v", k, e.Headers[k])
			}
		}
		for _, k := range []string{"X-Real-Ip", "X-Forwarded-For"} {
			if got := e.Headers.Get(k); got != "127.0.0.1" {
				t.Errorf("%s = %q, want the provider's real address", k, got)
			}
		}
	}
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t)
			hc := relaytest.ProviderClient(t, srv)
			send := func(name string) *http.Response {
				req, _ := http.NewRequest("POST", relaytest.TunnelURL(srv, name, "/"), strings.NewReader("{}"))
				for k, v := range forged {
					req.Header[k] = v
				}
				resp, err := hc.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				return resp
			}
			t.Run("live", func(t *testing.T) {
				relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "live"), "live", relaytest.EchoApp(t).URL))
				resp := send("live")
				defer resp.Body.Close()
				var e relaytest.Echoed
				json.NewDecoder(resp.Body).Decode(&e)
				check(t, e)
			})
			t.Run("queued", func(t *testing.T) {
				tok := relaytest.CreateToken(t, srv, "asleep")
				if resp := send("asleep"); resp.StatusCode != http.StatusAccepted {
					t.Fatalf("offline: status %d, want 202", resp.StatusCode)
				}
				got := make(chan http.Header, 1)
				app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) { got <- r.Header.Clone() })
				relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, tok, "asleep", app))
				select {
				case h := <-got:
					check(t, relaytest.Echoed{Headers: h})
				case <-time.After(15 * time.Second):
					t.Fatal("the queued delivery never arrived")
				}
			})
		})
	}
}

// TestEdgeRefusalsAreClearAndShownOnTheAgentsConsole: what the edge
// answers itself gets its own status, and the agent hears of it.
func TestEdgeRefusalsAreClearAndShownOnTheAgentsConsole(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) { c.MaxBody = 1 << 20 })
			var calls atomic.Int64
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) { calls.Add(1) })
			console := consoleAgent(t, srv, tr, "edge", app)
			tests := []struct {
				name, raw  string
				wantStatus int
				wantCode   string
				console    string
			}{
				{"a body over the limit by its length is 413", "POST /big HTTP/1.1\r\nHost: edge.localhost\r\nContent-Length: 2000000\r\n\r\n",
					413, "body_too_large", "POST /big 413"},
				{"a malformed chunked body is 400, not a tunnel error", "POST /chunks HTTP/1.1\r\nHost: edge.localhost\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF3\r\nx\r\n0\r\n\r\n",
					400, "bad_request_body", "POST /chunks 400"},
				{"a WebSocket upgrade is 501", "GET /ws HTTP/1.1\r\nHost: edge.localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
					501, "upgrade_unsupported", "GET /ws 501"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					c := rawConn(t, srv, "edge")
					io.WriteString(c, tt.raw)
					resp, code := answer(t, c)
					if resp.StatusCode != tt.wantStatus || code != tt.wantCode {
						t.Fatalf("got %d %q, want %d %q", resp.StatusCode, code, tt.wantStatus, tt.wantCode)
					}
					relaytest.WaitFor(t, "the refusal on the agent's console", func() bool {
						return strings.Contains(console.String(), tt.console)
					})
				})
			}
			if n := calls.Load(); n != 0 {
				t.Errorf("the app was called %d times for refused deliveries", n)
			}
		})
	}
}

// TestATunnelAtItsDeliveryCapAnswers503: beyond the cap the edge answers
// at once with Retry-After instead of queueing behind the agent.
func TestATunnelAtItsDeliveryCapAnswers503(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) { c.MaxDeliveries = 2 })
			arrived, release := make(chan struct{}, 2), make(chan struct{})
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				arrived <- struct{}{}
				<-release
			})
			relaytest.RunAgent(t, relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "capped"), "capped", app))
			hc := relaytest.ProviderClient(t, srv)
			held := make(chan int, 2)
			for range 2 {
				go func() {
					resp, err := hc.Post(relaytest.TunnelURL(srv, "capped", "/"), "text/plain", strings.NewReader("x"))
					if err != nil {
						held <- 0
						return
					}
					resp.Body.Close()
					held <- resp.StatusCode
				}()
			}
			for range 2 {
				select {
				case <-arrived:
				case <-time.After(15 * time.Second):
					t.Fatal("the first deliveries never reached the app")
				}
			}
			resp, e := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "capped", "/"), "{}")
			if resp.StatusCode != http.StatusServiceUnavailable || e["error"] != "tunnel_busy" || resp.Header.Get("Retry-After") == "" {
				t.Errorf("over the cap: %d %v (Retry-After %q), want 503 tunnel_busy with Retry-After", resp.StatusCode, e, resp.Header.Get("Retry-After"))
			}
			close(release)
			for range 2 {
				if s := <-held; s != http.StatusOK {
					t.Errorf("a held delivery got %d", s)
				}
			}
			if resp, _ := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "capped", "/"), "{}"); resp.StatusCode != http.StatusOK {
				t.Errorf("after the burst: %d", resp.StatusCode)
			}
		})
	}
}

// TestSlowSendersCannotStarveATunnel: senders that trickle their bodies
// hold no delivery slot while a small body arrives, and large uploads in
// progress hold at most half of them, so other deliveries keep passing.
func TestSlowSendersCannotStarveATunnel(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) { c.MaxDeliveries = 4; c.BodyTimeout = time.Hour })
			uploads := make(chan struct{}, 10)
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path == "/upload" {
					uploads <- struct{}{}
				}
				io.Copy(io.Discard, r.Body)
			})
			st, err := record.Open(context.Background(), t.TempDir(), record.Options{BodyCap: 1 << 10})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			// A small recording cap: the agent forwards an upload to the
			// app once its first KiB is in, so the test sees it admitted.
			consoleAgent(t, srv, tr, "victim", app, func(c *client.Config) { c.Store = st })

			for range 20 { // small bodies, stalled after one byte
				io.WriteString(rawConn(t, srv, "victim"), "POST /slow HTTP/1.1\r\nHost: victim.localhost\r\nContent-Length: 1000\r\n\r\nx")
			}
			big := make([]*tls.Conn, 4) // large uploads, stalled after 80 KiB
			for i := range big {
				big[i] = rawConn(t, srv, "victim")
				fmt.Fprintf(big[i], "POST /upload HTTP/1.1\r\nHost: victim.localhost\r\nContent-Length: 10000000\r\n\r\n%s", strings.Repeat("u", 80<<10))
			}
			// Two are admitted and reach the app; the other two are
			// answered 503 at once.
			refused := make(chan int, len(big))
			for _, c := range big {
				go func() {
					resp, err := http.ReadResponse(bufio.NewReader(c), nil)
					if err == nil {
						refused <- resp.StatusCode
					}
				}()
			}
			for i := range len(big) {
				select {
				case <-uploads:
				case s := <-refused:
					if s != http.StatusServiceUnavailable {
						t.Errorf("a stalled upload got %d", s)
					}
				case <-time.After(15 * time.Second):
					t.Fatalf("%d of 4 stalled uploads were neither admitted nor refused", len(big)-i)
				}
			}
			if len(refused) != 0 || len(uploads) != 0 {
				t.Errorf("more answers than uploads")
			}
			hc := relaytest.ProviderClient(t, srv)
			for i := range 10 {
				if resp, e := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "victim", "/ok"), "{}"); resp.StatusCode != http.StatusOK {
					t.Fatalf("delivery %d while slow senders hang: %d %v", i, resp.StatusCode, e)
				}
			}
		})
	}
}

// TestASlowBodyIsAnswered408: a body that stops arriving is cut after the
// body timeout, on live and queued names, small or streamed, and the
// tunnel goes on serving.
func TestASlowBodyIsAnswered408(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) {
				c.BodyTimeout = 200 * time.Millisecond
				c.MinBodyRate = 10 << 20 // the streamed body's 80 KiB buy little more time
			})
			relaytest.CreateToken(t, srv, "away") // reserved, no agent: the queue
			console := consoleAgent(t, srv, tr, "slow", relaytest.EchoApp(t).URL)
			for _, tt := range []struct{ name, host, body string }{
				{"live, small body", "slow", "x"},
				{"live, streamed body", "slow", strings.Repeat("s", 80<<10)},
				{"queued", "away", "x"},
			} {
				t.Run(tt.name, func(t *testing.T) {
					c := rawConn(t, srv, tt.host)
					fmt.Fprintf(c, "POST /trickle HTTP/1.1\r\nHost: %s.localhost\r\nContent-Length: 10000000\r\n\r\n%s", tt.host, tt.body)
					resp, code := answer(t, c)
					if resp.StatusCode != http.StatusRequestTimeout || code != "body_timeout" {
						t.Fatalf("got %d %q, want 408 body_timeout", resp.StatusCode, code)
					}
				})
			}
			relaytest.WaitFor(t, "the 408s on the agent's console", func() bool {
				return strings.Count(console.String(), "POST /trickle 408") == 2
			})
			hc := relaytest.ProviderClient(t, srv)
			if resp, _ := relaytest.Post(t, hc, relaytest.TunnelURL(srv, "slow", "/"), "{}"); resp.StatusCode != http.StatusCreated {
				t.Errorf("after the slow senders: %d", resp.StatusCode)
			}
		})
	}
}

// BenchmarkDelivery is a provider's 1 KB JSON POST through the whole
// relay: HTTPS to the edge, the tunnel, the agent recording it, a local
// app, and back. Everything runs in this process, so cpu-µs/op and
// allocs/op include the provider's client and the local app; compare runs
// of this benchmark with each other, not with relay bench.
func BenchmarkDelivery(b *testing.B) {
	body := `{"id":"evt_bench","type":"payment_intent.succeeded","data":{"pad":"` + strings.Repeat("x", 900) + `"}}`
	for _, tr := range relaytest.Transports {
		for _, c := range []int{1, 16} {
			b.Run(fmt.Sprintf("%s/c=%d", tr, c), func(b *testing.B) {
				srv := relaytest.StartServer(b)
				app := relaytest.App(b, func(w http.ResponseWriter, r *http.Request) {
					io.Copy(io.Discard, r.Body)
					w.Header().Set("Content-Type", "application/json")
					io.WriteString(w, `{"ok":true}`)
				})
				st, err := record.Open(context.Background(), b.TempDir(), record.Options{})
				if err != nil {
					b.Fatal(err)
				}
				b.Cleanup(func() { st.Close() })
				cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(b, srv, "bench"), "bench", app)
				cfg.Store = st
				relaytest.RunAgent(b, cfg)
				hc := relaytest.ProviderClient(b, srv)
				hc.Transport.(*http.Transport).ForceAttemptHTTP2 = false
				url := relaytest.TunnelURL(srv, "bench", "/hook")
				send := func() error {
					resp, err := hc.Post(url, "application/json", strings.NewReader(body))
					if err != nil {
						return err
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != http.StatusOK {
						return fmt.Errorf("status %d", resp.StatusCode)
					}
					return nil
				}
				for range c { // connections and streams up before the clock starts
					if err := send(); err != nil {
						b.Fatal(err)
					}
				}
				cpu := relaytest.StartCPU()
				b.ReportAllocs()
				b.ResetTimer()
				var wg sync.WaitGroup
				for w := range c {
					n := b.N / c
					if w < b.N%c {
						n++
					}
					wg.Go(func() {
						for range n {
							if err := send(); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.StopTimer()
				cpu.Report(b)
			})
		}
	}
}

// TestAFloodOfStalledUploadsLeavesTheAgentsMemoryAlone is the security
// probe's attack on the real binaries: 1,500 provider connections that
// declare a megabyte body and send a byte (then, a second wave, 70 KiB)
// and stall. The agent used to reserve a buffer the declared size for
// each: 1.5 GiB. Now it buffers what arrives, at most the tunnel's cap at
// once, and the tunnel keeps serving.
func TestAFloodOfStalledUploadsLeavesTheAgentsMemoryAlone(t *testing.T) {
	if testing.Short() {
		t.Skip("builds relay and runs processes")
	}
	bin := relaytest.BuildRelay(t)
	dir := t.TempDir()
	data := dir + "/server"
	token := relaytest.CLIToken(t, bin, "--init", "--name", "flood", "--data", data)
	port := relaytest.FreePort(t)
	listen := fmt.Sprintf("127.0.0.1:%d", port)
	start := func(args ...string) *exec.Cmd {
		cmd := exec.Command(bin, args...)
		log := &relaytest.Buffer{}
		cmd.Stdout, cmd.Stderr = log, log
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Kill()
			cmd.Wait()
			if t.Failed() {
				t.Logf("%s:\n%s", args[0], log.String())
			}
		})
		return cmd
	}
	start("server", "--dev", "--listen", listen, "--data", data)
	relaytest.WaitListening(t, listen)
	app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) { io.Copy(io.Discard, r.Body) })
	agent := start("connect", app, "--server", listen, "--token", token, "--name", "flood", "--ca", data+"/dev-ca.pem",
		"--transport", "tcp", "--data", dir+"/agent", "--inspect", "")

	pem, err := os.ReadFile(data + "/dev-ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	conf := &tls.Config{RootCAs: pool, ServerName: "flood.localhost", NextProtos: []string{"http/1.1"}}
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: conf,
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, listen)
		}}}
	url := fmt.Sprintf("https://flood.localhost:%d/ok", port)
	relaytest.WaitFor(t, "the tunnel to serve", func() bool {
		resp, err := hc.Post(url, "text/plain", strings.NewReader("x"))
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	before := rssMiB(t, agent.Process.Pid)
	for _, wave := range []struct {
		name string
		body string
	}{{"one byte each", "a"}, {"70 KiB each", strings.Repeat("a", 70<<10)}} {
		conns := make([]*tls.Conn, 0, 1500)
		for range 1500 {
			c, err := tls.Dial("tcp", listen, conf)
			if err != nil {
				t.Fatalf("%s: connection %d: %v", wave.name, len(conns), err)
			}
			conns = append(conns, c)
			fmt.Fprintf(c, "POST /x HTTP/1.1\r\nHost: flood.localhost:%d\r\nContent-Length: 1000000\r\n\r\n%s", port, wave.body)
		}
		// The tunnel still serves while they stall.
		resp, err := hc.Post(url, "text/plain", strings.NewReader("x"))
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("%s: a delivery during the flood: %v %v", wave.name, resp, err)
		}
		resp.Body.Close()
		after := rssMiB(t, agent.Process.Pid)
		t.Logf("%s: agent RSS %.0f MiB before, %.0f MiB with 1,500 stalled uploads", wave.name, before, after)
		if after > 100 {
			t.Errorf("%s: agent RSS %.0f MiB, want under 100", wave.name, after)
		}
		for _, c := range conns {
			c.Close()
		}
	}
}

// rssMiB is a process's resident set size.
func rssMiB(t *testing.T, pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Skipf("no /proc here: %v", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 64)
			return kb / 1024
		}
	}
	return 0
}
