package client_test

import (
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
)

func TestSilentNetworkIsNoticedAndTheAgentReconnects(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, func(c *server.Config) { c.Heartbeat = 100 * time.Millisecond })
			app := relaytest.EchoApp(t)
			cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "sleepy"), "sleepy", app.URL)
			var open func(bool)
			if tr == "quic" {
				gate := relaytest.NewUDPGate(t, srv.QUICAddr(), true)
				cfg.QUICServer = gate.Addr()
				open = gate.Open.Store
			} else {
				gate := relaytest.NewTCPGate(t, srv.Addr())
				cfg.Server = gate.Addr()
				open = gate.Open.Store
			}
			console := &relaytest.Buffer{}
			cfg.Console = console
			t.Cleanup(func() { t.Logf("console:\n%s", console.String()) })
			a := relaytest.RunAgent(t, cfg)
			first := a.Welcome().SessionID

			open(false) // the laptop sleeps, the cable is cut
			relaytest.WaitFor(t, "the agent to notice the silence", func() bool {
				return strings.Contains(console.String(), "connection lost")
			})
			if c := console.String(); !strings.Contains(c, protocol.ErrPeerSilent.Error()) {
				t.Errorf("the agent did not say the server went silent:\n%s", c)
			}
			open(true) // and wakes up
			relaytest.WaitFor(t, "the agent to reconnect", func() bool {
				return strings.Contains(console.String(), "connected again") && a.Welcome().SessionID != first
			})
			// The harness's 300 ms idle timeout can end the new session too
			// on a starved machine; the agent then reconnects again, so
			// deliveries are asked for until one reaches the app.
			hc := relaytest.ProviderClient(t, srv)
			relaytest.WaitFor(t, "a delivery after waking to reach the app", func() bool {
				resp, err := hc.Get(relaytest.TunnelURL(srv, "sleepy", "/"))
				if err != nil {
					return false
				}
				resp.Body.Close()
				return resp.StatusCode == http.StatusCreated
			})
		})
	}
}

// TestSaturatedSessionStaysUp fills one session with concurrent small
// deliveries and large uploads to an app that answers slowly, with the CPU
// loaded (RELAY_STRESS) and the harness's short heartbeat: a busy peer must
// never be taken for a dead one.
func TestSaturatedSessionStaysUp(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			relaytest.Stress(t)
			srvLog := &relaytest.Buffer{}
			srv := relaytest.StartServer(t, func(c *server.Config) {
				c.MaxBody = 64 << 20
				c.Logger = slog.New(slog.NewTextHandler(srvLog, nil))
			})
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("server log:\n%s", srvLog.String())
				}
			})
			appURL := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				time.Sleep(50 * time.Millisecond) // a slow app, not synchronisation
				h := sha256.New()
				n, err := io.Copy(h, r.Body)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
				w.Header().Set("X-App", "yes")
				fmt.Fprintf(w, "%d %x", n, h.Sum(nil))
			})
			cfg := relaytest.AgentConfig(srv, tr, relaytest.CreateToken(t, srv, "busy"), "busy", appURL)
			console := &relaytest.Buffer{}
			cfg.Console = console
			cfg.Logger = slog.New(slog.DiscardHandler)
			cfg.Timeout = 55 * time.Second // a starved app is not what this tests
			a := relaytest.RunAgent(t, cfg)
			session := a.Welcome().SessionID
			hc := relaytest.ProviderClientHTTP1(t, srv)

			const small, large, largeSize = 200, 6, 4 << 20
			bigSum := relaytest.PatternSum(largeSize)
			errs := make(chan error, small+large)
			var wg sync.WaitGroup
			send := func(i int, body io.Reader, want string) {
				defer wg.Done()
				resp, err := hc.Post(relaytest.TunnelURL(srv, "busy", fmt.Sprintf("/hook/%d", i)), "application/octet-stream", body)
				if err != nil {
					errs <- fmt.Errorf("delivery %d: %w", i, err)
					return
				}
				got, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK || resp.Header.Get("X-App") != "yes" || string(got) != want {
					errs <- fmt.Errorf("delivery %d: status %d (%s) %q, want the app's %q", i, resp.StatusCode, resp.Header.Get(protocol.HeaderError), got, want)
				}
			}
			for i := range large {
				wg.Add(1)
				go send(i, &relaytest.PatternReader{N: largeSize}, fmt.Sprintf("%d %x", largeSize, bigSum))
			}
			for i := range small {
				body := fmt.Sprintf(`{"n":%d}`, i)
				wg.Add(1)
				go send(large+i, strings.NewReader(body), fmt.Sprintf("%d %x", len(body), sha256.Sum256([]byte(body))))
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			if c := console.String(); strings.Contains(c, "connection lost") || a.Welcome().SessionID != session {
				t.Fatalf("the session was dropped under load:\n%s", c)
			}
		})
	}
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

// TestAgentReconnectsAfterTheServerIsKilled kills the relay server process
// (SIGKILL: no GoAway, no FIN from the application) and starts it again:
// the agent learns of it from the restarted server itself (a QUIC
// stateless reset, made with the key kept in the data directory; a TCP
// reset) rather than by waiting out the silence, and serves its name again.
func TestAgentReconnectsAfterTheServerIsKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds relay and runs the server as a process")
	}
	bin := relaytest.BuildRelay(t)
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			dir := t.TempDir()
			data := filepath.Join(dir, "server")
			listen := fmt.Sprintf("127.0.0.1:%d", relaytest.FreePort(t))
			token := relaytest.CLIToken(t, bin, "--init", "--name", "phoenix", "--data", data)
			start := func() *exec.Cmd {
				cmd := exec.Command(bin, "server", "--dev", "--listen", listen, "--data", data)
				cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
				if err := cmd.Start(); err != nil {
					t.Fatal(err)
				}
				relaytest.WaitListening(t, listen)
				return cmd
			}
			srv := start()
			t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })

			app := relaytest.EchoApp(t)
			console := &relaytest.Buffer{}
			a := relaytest.RunAgent(t, client.Config{
				Server: listen, ServerName: "localhost", Token: token, Name: "phoenix", Transport: tr,
				CAFile: filepath.Join(data, "dev-ca.pem"), Target: app.URL, Console: console,
			})
			t.Cleanup(func() {
				if t.Failed() {
					t.Logf("console:\n%s", console.String())
				}
			})
			first := a.Welcome().SessionID

			srv.Process.Signal(syscall.SIGKILL)
			srv.Wait()
			srv = start()
			relaytest.WaitFor(t, "the agent to serve its name again", func() bool {
				w := a.Welcome()
				return w.SessionID != first && w.SessionID != ""
			})
			lost := console.String()
			want := map[string]string{"quic": "stateless reset", "tcp": "closed the connection"}[tr]
			if !strings.Contains(lost, want) {
				t.Errorf("the agent did not learn of the restart from the server (%q):\n%s", want, lost)
			}
			hc := providerFor(t, listen, filepath.Join(data, "dev-ca.pem"))
			resp, err := hc.Get(a.Welcome().URL + "/")
			if err != nil || resp.StatusCode != http.StatusCreated {
				t.Fatalf("delivery after the restart: %v %v", resp, err)
			}
			resp.Body.Close()
		})
	}
}

func providerFor(t *testing.T, addr, caFile string) *http.Client {
	t.Helper()
	pem, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	return relaytest.HTTPSClient(t, addr, pem)
}
