package client_test

import (
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

func TestSilentNetworkIsNoticedAndTheAgentReconnects(t *testing.T) {
	srv := relaytest.StartServer(t, func(c *server.Config) { c.Heartbeat = 100 * time.Millisecond })
	app := relaytest.EchoApp(t)
	gate := relaytest.NewUDPGate(t, srv.QUICAddr(), true)
	cfg := relaytest.AgentConfig(srv, "quic", relaytest.CreateToken(t, srv, "sleepy"), "sleepy", app.URL)
	cfg.QUICServer = gate.Addr()
	console := &relaytest.Buffer{}
	cfg.Console = console
	a := relaytest.RunAgent(t, cfg)
	first := a.Welcome().SessionID

	gate.Open.Store(false) // the laptop sleeps
	relaytest.WaitFor(t, "the agent to notice the silence", func() bool {
		return strings.Contains(console.String(), "connection lost")
	})
	gate.Open.Store(true) // and wakes up
	relaytest.WaitFor(t, "the agent to reconnect", func() bool {
		return strings.Contains(console.String(), "connected again via QUIC") && a.Welcome().SessionID != first
	})
	resp, err := relaytest.ProviderClient(t, srv).Get(relaytest.TunnelURL(srv, "sleepy", "/"))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("delivery after waking: %v %v", resp, err)
	}
	resp.Body.Close()
	t.Logf("console:\n%s", console.String())
}

func TestAutoMovesBackToQUICWhenItReturns(t *testing.T) {
	srv := relaytest.StartServer(t)
	app := relaytest.EchoApp(t)
	gate := relaytest.NewUDPGate(t, srv.QUICAddr(), false) // UDP blocked at first
	cfg := relaytest.AgentConfig(srv, "auto", relaytest.CreateToken(t, srv, "roam"), "roam", app.URL)
	cfg.QUICServer = gate.Addr()
	cfg.QUICTimeout = 2 * time.Second
	cfg.QUICRetry = 100 * time.Millisecond
	console := &relaytest.Buffer{}
	cfg.Console = console
	cfg.Logger = slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := relaytest.RunAgent(t, cfg)
	if a.Transport() != protocol.TransportTCP {
		t.Fatalf("with UDP blocked the agent is on %q", a.Transport())
	}
	gate.Open.Store(true)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", console.String())
		}
	})
	relaytest.WaitFor(t, "the agent to move to QUIC", func() bool { return a.Transport() == protocol.TransportQUIC })
	resp, err := relaytest.ProviderClient(t, srv).Get(relaytest.TunnelURL(srv, "roam", "/"))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("delivery after moving to QUIC: %v %v", resp, err)
	}
	resp.Body.Close()
	for _, want := range []string{"falling back to TCP", "connected via TCP", "moved to QUIC"} {
		if !strings.Contains(console.String(), want) {
			t.Errorf("console lacks %q:\n%s", want, console.String())
		}
	}
}
