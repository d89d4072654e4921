package server_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
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

var _ = client.Config{}
var _ = protocol.Version
