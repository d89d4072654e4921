package client_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

func TestUnreachableServerIsReportedAtOnce(t *testing.T) {
	srv := relaytest.StartServer(t)
	cfg := relaytest.AgentConfig(srv, "auto", relaytest.CreateToken(t, srv, "x"), "x", "3000")
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
	srv := relaytest.StartServer(t, func(c *server.Config) { c.QUICListen = "off" })
	app := relaytest.EchoApp(t)
	cfg := relaytest.AgentConfig(srv, "auto", relaytest.CreateToken(t, srv, "fb"), "fb", app.URL)
	cfg.QUICServer = srv.Addr() // nothing answers UDP there
	start := time.Now()
	a := relaytest.RunAgent(t, cfg)
	if a.Transport() != protocol.TransportTCP {
		t.Fatalf("transport = %q, want tcp", a.Transport())
	}
	t.Logf("fell back to TCP in %s", time.Since(start).Round(time.Millisecond))
	resp, err := relaytest.ProviderClient(t, srv).Get(relaytest.TunnelURL(srv, "fb", "/"))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("delivery after fallback: %v %v", resp, err)
	}
	resp.Body.Close()
}

func TestAgentReconnectsAfterServerRestart(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			dir := t.TempDir()
			first := relaytest.StartServerAt(t, dir, "127.0.0.1:0")
			addr := first.Addr()
			app := relaytest.EchoApp(t)
			cfg := relaytest.AgentConfig(first, tr, relaytest.CreateToken(t, first, "again"), "again", app.URL)
			a := relaytest.RunAgent(t, cfg)
			firstURL := a.Welcome().URL
			oldSession := a.Welcome().SessionID

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := first.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			cancel()
			second := relaytest.StartServerAt(t, dir, addr)
			relaytest.WaitFor(t, "the agent to reconnect", func() bool {
				w := a.Welcome()
				return w.SessionID != oldSession && w.SessionID != ""
			})
			if got := a.Welcome().URL; got != firstURL {
				t.Fatalf("after reconnect the URL is %q, was %q", got, firstURL)
			}
			resp, err := relaytest.ProviderClient(t, second).Post(relaytest.TunnelURL(second, "again", "/"), "text/plain", strings.NewReader("x"))
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("delivery after restart: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}
