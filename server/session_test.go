package server_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

func TestAgentIsRefused(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := startServer(t)
			app := echoApp(t)
			owner := createToken(t, srv, "taken")
			other := createToken(t, srv, "mine")
			tests := []struct {
				name    string
				token   string
				agent   string
				wantErr error
				wantMsg string
			}{
				{"a bad token is refused with its message", "relay_not_a_real_token", "taken", protocol.ErrBadToken, "unknown or revoked"},
				{"a second token cannot take a name it does not own", other, "taken", protocol.ErrNameTaken, "reserved by another token"},
				{"a token cannot serve a free name it was not given", other, "free", protocol.ErrNameNotAllowed, "relay token create --name free"},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					a, err := client.New(agentConfig(srv, tr, tt.token, tt.agent, app.URL))
					if err != nil {
						t.Fatal(err)
					}
					ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
					defer cancel()
					err = a.Run(ctx)
					if !errors.Is(err, tt.wantErr) || !strings.Contains(err.Error(), tt.wantMsg) {
						t.Fatalf("Run() = %v, want %v mentioning %q", err, tt.wantErr, tt.wantMsg)
					}
				})
			}
			// The owner still gets its name after the refusals.
			runAgent(t, agentConfig(srv, tr, owner, "taken", app.URL))
		})
	}
}

func TestUnreachableServerIsReportedAtOnce(t *testing.T) {
	srv := startServer(t)
	cfg := agentConfig(srv, "auto", createToken(t, srv, "x"), "x", "3000")
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	cfg.Server = ln.Addr().String()
	ln.Close()
	cfg.QUICServer = cfg.Server
	a, _ := client.New(cfg)
	err := a.Run(context.Background())
	if !errors.Is(err, client.ErrUnreachable) || !strings.Contains(err.Error(), "quic") || !strings.Contains(err.Error(), "tcp") {
		t.Fatalf("Run() = %v, want ErrUnreachable naming both transports", err)
	}
}

func TestAutoFallsBackToTCPWhenQUICIsClosed(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.QUICListen = "off" })
	app := echoApp(t)
	cfg := agentConfig(srv, "auto", createToken(t, srv, "fb"), "fb", app.URL)
	cfg.QUICServer = srv.Addr() // nothing answers UDP there
	start := time.Now()
	a := runAgent(t, cfg)
	if a.Transport() != protocol.TransportTCP {
		t.Fatalf("transport = %q, want tcp", a.Transport())
	}
	t.Logf("fell back to TCP in %s", time.Since(start).Round(time.Millisecond))
	resp, err := providerClient(t, srv).Get(tunnelURL(srv, "fb", "/"))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("delivery after fallback: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestAgentReconnectsAfterServerRestart(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			dir := t.TempDir()
			first := startServerAt(t, dir, "127.0.0.1:0")
			addr := first.Addr()
			app := echoApp(t)
			cfg := agentConfig(first, tr, createToken(t, first, "again"), "again", app.URL)
			a := runAgent(t, cfg)
			firstURL := a.Welcome().URL
			oldSession := a.Welcome().SessionID

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := first.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			cancel()
			second := startServerAt(t, dir, addr)
			waitFor(t, "the agent to reconnect", func() bool {
				w := a.Welcome()
				return w.SessionID != oldSession && w.SessionID != ""
			})
			if got := a.Welcome().URL; got != firstURL {
				t.Fatalf("after reconnect the URL is %q, was %q", got, firstURL)
			}
			resp, err := providerClient(t, second).Post(tunnelURL(second, "again", "/"), "text/plain", strings.NewReader("x"))
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("delivery after restart: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}

func startServerAt(t *testing.T, dir, addr string) *server.Server {
	return startServer(t, func(c *server.Config) { c.DataDir = dir; c.Listen = addr })
}

func TestSameTokenReplacesAStaleSession(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := startServer(t)
			app := echoApp(t)
			tok := createToken(t, srv, "laptop")
			old, oldErr := startAgent(t, agentConfig(srv, tr, tok, "laptop", app.URL))
			<-old.Ready()
			fresh := runAgent(t, agentConfig(srv, tr, tok, "laptop", app.URL))
			if fresh.Welcome().SessionID == old.Welcome().SessionID {
				t.Fatal("the new agent did not get a session of its own")
			}
			select {
			case err := <-oldErr:
				if !errors.Is(err, client.ErrReplaced) {
					t.Fatalf("old agent stopped with %v, want ErrReplaced", err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the replaced agent did not stop")
			}
			resp, err := providerClient(t, srv).Get(tunnelURL(srv, "laptop", "/"))
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("delivery to the new session: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}

func TestSlowClientDoesNotBlockOthers(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.ReadHeaderTimeout = 500 * time.Millisecond })
	app := echoApp(t)
	runAgent(t, agentConfig(srv, "tcp", createToken(t, srv, "hooks"), "hooks", app.URL))
	hc := providerClient(t, srv)

	// A slowloris: TLS done, then half a request line and nothing more.
	conf := hc.Transport.(*http.Transport).TLSClientConfig.Clone()
	conf.ServerName = "hooks.localhost"
	conf.NextProtos = []string{"http/1.1"}
	slow, err := tls.Dial("tcp", srv.Addr(), conf)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "POST /webhooks HTTP/1.1\r\nHost: hooks.localhost\r\n")

	for i := range 20 {
		resp, err := hc.Post(tunnelURL(srv, "hooks", "/"), "text/plain", strings.NewReader("fast"))
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("request %d while a slow client hangs: %v %v", i, resp, err)
		}
		resp.Body.Close()
	}
	// The server hangs up on the slow client once its header time is up.
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = bufio.NewReader(slow).ReadString('\n')
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server never closed the slow connection")
	}
}

func TestShutdownLetsInFlightDeliveriesFinish(t *testing.T) {
	for _, tr := range transports {
		t.Run(tr, func(t *testing.T) {
			srv := startServer(t)
			arrived := make(chan struct{})
			release := make(chan struct{})
			app := httptestServer(t, func(w http.ResponseWriter, r *http.Request) {
				close(arrived)
				<-release
				io.WriteString(w, "finished")
			})
			runAgent(t, agentConfig(srv, tr, createToken(t, srv, "drain"), "drain", app))
			hc := providerClient(t, srv)
			got := make(chan string, 1)
			go func() {
				resp, err := hc.Get(tunnelURL(srv, "drain", "/"))
				if err != nil {
					got <- err.Error()
					return
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				got <- string(b)
			}()
			<-arrived
			shut := make(chan error, 1)
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				shut <- srv.Shutdown(ctx)
			}()
			select {
			case err := <-shut:
				t.Fatalf("Shutdown returned (%v) while a delivery was in flight", err)
			case <-time.After(200 * time.Millisecond):
			}
			close(release)
			if b := <-got; b != "finished" {
				t.Fatalf("in-flight delivery got %q", b)
			}
			if err := <-shut; err != nil {
				t.Fatalf("Shutdown: %v", err)
			}
		})
	}
}
