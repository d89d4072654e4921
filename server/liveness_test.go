package server_test

import (
	"bytes"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

// udpGate forwards UDP between agents and a QUIC listener while open, and
// silently drops every datagram while closed: a network that went away
// without telling anyone, as a sleeping laptop's does.
type udpGate struct {
	conn   *net.UDPConn
	target *net.UDPAddr
	open   atomic.Bool
	mu     sync.Mutex
	peers  map[string]*net.UDPConn // agent address -> socket towards target
}

func newUDPGate(t *testing.T, target string, open bool) *udpGate {
	t.Helper()
	ta, err := net.ResolveUDPAddr("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	g := &udpGate{conn: c, target: ta, peers: map[string]*net.UDPConn{}}
	g.open.Store(open)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		c.Close()
		g.mu.Lock()
		for _, p := range g.peers {
			p.Close()
		}
		g.mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		buf := make([]byte, 64<<10)
		for {
			n, from, err := c.ReadFromUDP(buf)
			if err != nil {
				return
			}
			if !g.open.Load() {
				continue
			}
			g.mu.Lock()
			up, ok := g.peers[from.String()]
			if !ok {
				up, err = net.DialUDP("udp", nil, ta)
				if err != nil {
					g.mu.Unlock()
					continue
				}
				g.peers[from.String()] = up
				wg.Add(1)
				go func() {
					defer wg.Done()
					b := make([]byte, 64<<10)
					for {
						n, err := up.Read(b)
						if err != nil {
							return
						}
						if g.open.Load() {
							c.WriteToUDP(b[:n], from)
						}
					}
				}()
			}
			g.mu.Unlock()
			up.Write(buf[:n])
		}
	}()
	return g
}

func (g *udpGate) addr() string { return g.conn.LocalAddr().String() }

// syncBuffer is a console the test can read while the agent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestSilentNetworkIsNoticedAndTheAgentReconnects(t *testing.T) {
	srv := startServer(t, func(c *server.Config) { c.Heartbeat = 100 * time.Millisecond })
	app := echoApp(t)
	gate := newUDPGate(t, srv.QUICAddr(), true)
	cfg := agentConfig(srv, "quic", createToken(t, srv, "sleepy"), "sleepy", app.URL)
	cfg.QUICServer = gate.addr()
	console := &syncBuffer{}
	cfg.Console = console
	a := runAgent(t, cfg)
	first := a.Welcome().SessionID

	gate.open.Store(false) // the laptop sleeps
	waitFor(t, "the agent to notice the silence", func() bool {
		return strings.Contains(console.String(), "connection lost")
	})
	gate.open.Store(true) // and wakes up
	waitFor(t, "the agent to reconnect", func() bool {
		return strings.Contains(console.String(), "connected again via QUIC") && a.Welcome().SessionID != first
	})
	resp, err := providerClient(t, srv).Get(tunnelURL(srv, "sleepy", "/"))
	if err != nil || resp.StatusCode != http.StatusCreated {
		t.Fatalf("delivery after waking: %v %v", resp, err)
	}
	resp.Body.Close()
	t.Logf("console:\n%s", console.String())
}

func TestAutoMovesBackToQUICWhenItReturns(t *testing.T) {
	srv := startServer(t)
	app := echoApp(t)
	gate := newUDPGate(t, srv.QUICAddr(), false) // UDP blocked at first
	cfg := agentConfig(srv, "auto", createToken(t, srv, "roam"), "roam", app.URL)
	cfg.QUICServer = gate.addr()
	cfg.QUICTimeout = 2 * time.Second
	cfg.QUICRetry = 100 * time.Millisecond
	console := &syncBuffer{}
	cfg.Console = console
	cfg.Logger = slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a := runAgent(t, cfg)
	if a.Transport() != protocol.TransportTCP {
		t.Fatalf("with UDP blocked the agent is on %q", a.Transport())
	}
	gate.open.Store(true)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("console:\n%s", console.String())
		}
	})
	waitFor(t, "the agent to move to QUIC", func() bool { return a.Transport() == protocol.TransportQUIC })
	resp, err := providerClient(t, srv).Get(tunnelURL(srv, "roam", "/"))
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
