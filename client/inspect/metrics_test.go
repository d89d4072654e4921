package inspect_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/client"
	"github.com/relaytunnel/relay/client/inspect"
	"github.com/relaytunnel/relay/client/record"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// TestTheAgentsMetricsAndHealthzAreServedBesideTheInspector runs a real
// server and agent, and reads the agent's /metrics and /healthz from its
// inspector's listener through deliveries, a replay, a lost connection
// and a reconnect.
func TestTheAgentsMetricsAndHealthzAreServedBesideTheInspector(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			dir := t.TempDir()
			first := relaytest.StartServerAt(t, dir, "127.0.0.1:0")
			addr := first.Addr()
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if r.URL.Path == "/fail" {
					http.Error(w, "no", http.StatusServiceUnavailable)
					return
				}
				io.WriteString(w, "fine")
			})
			st := newStore(t)
			cfg := relaytest.AgentConfig(first, tr, relaytest.CreateToken(t, first, "metered"), "metered", app)
			cfg.Store = st
			a := relaytest.RunAgent(t, cfg)
			_, base := inspector(t, st, inspect.Options{Replay: a.Replay, Metrics: a.MetricsHandler(), Health: a.HealthHandler()})
			health := func() (int, string) { return do(t, "GET", base+"/healthz", "", nil) }
			scrape := func() relaytest.Metrics { return relaytest.Scrape(t, base+"/metrics") }
			cls := func(c string) map[string]string { return map[string]string{"status_class": c, "transport": tr} }

			if code, body := health(); code != http.StatusOK || body != "connected\n" {
				t.Errorf("/healthz while connected: %d %q, want 200 connected", code, body)
			}
			hc := relaytest.ProviderClient(t, first)
			for _, path := range []string{"/a", "/b", "/c", "/fail"} {
				resp, err := hc.Post(relaytest.TunnelURL(first, "metered", path), "application/json", strings.NewReader(`{"n":1}`))
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			var m relaytest.Metrics
			relaytest.WaitFor(t, "four deliveries counted", func() bool {
				m = scrape()
				return m.Value("relay_agent_deliveries_total", map[string]string{"transport": tr}) == 4
			})
			if got := m.Value("relay_agent_deliveries_total", cls("2xx")); got != 3 {
				t.Errorf("2xx deliveries over %s = %v, want 3", tr, got)
			}
			if got := m.Value("relay_agent_deliveries_total", cls("5xx")); got != 1 {
				t.Errorf("5xx deliveries over %s = %v, want 1", tr, got)
			}
			if got := m.Value("relay_agent_delivery_duration_seconds", map[string]string{"transport": tr}); got != 4 {
				t.Errorf("local app answers timed = %v, want 4", got)
			}
			if got := m.Value("relay_agent_request_bytes_total", nil); got != 4*7 {
				t.Errorf("request bytes = %v, want %d", got, 4*7)
			}
			if got := m.Value("relay_agent_response_bytes_total", nil); got != 3*4+3 {
				t.Errorf("response bytes = %v, want %d", got, 3*4+3)
			}
			if got := m.Value("relay_agent_connected", nil); got != 1 {
				t.Errorf("relay_agent_connected = %v while connected", got)
			}

			var id int64
			relaytest.WaitFor(t, "a recording", func() bool {
				l, err := st.List(context.Background(), record.Filter{})
				if err == nil && len(l) > 0 {
					id = l[0].ID
				}
				return id != 0
			})
			if _, err := a.Replay(context.Background(), id, nil); err != nil {
				t.Fatalf("replay: %v", err)
			}
			if got := scrape().Value("relay_agent_replays_total", map[string]string{"result": "ok"}); got != 1 {
				t.Errorf("relay_agent_replays_total{result=ok} = %v after one replay", got)
			}

			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			if err := first.Shutdown(ctx); err != nil {
				t.Fatal(err)
			}
			cancel()
			relaytest.WaitFor(t, "/healthz to say 503 while the relay is away", func() bool {
				code, body := health()
				return code == http.StatusServiceUnavailable && body == "not connected\n"
			})
			if got := scrape().Value("relay_agent_connected", nil); got != 0 {
				t.Errorf("relay_agent_connected = %v with the relay gone", got)
			}
			relaytest.StartServerAt(t, dir, addr)
			relaytest.WaitFor(t, "the agent to reconnect", func() bool { code, _ := health(); return code == http.StatusOK })
			m = scrape()
			if got := m.Value("relay_agent_reconnects_total", nil); got != 1 {
				t.Errorf("relay_agent_reconnects_total = %v after one reconnect", got)
			}
			if got := m.Value("relay_agent_connected", nil); got != 1 {
				t.Errorf("relay_agent_connected = %v after reconnecting", got)
			}
		})
	}
}

func TestWithoutMetricsTheInspectorHasNoMetricsRoute(t *testing.T) {
	_, base := inspector(t, newStore(t), inspect.Options{})
	if code, _ := do(t, "GET", base+"/metrics", "", nil); code != http.StatusNotFound {
		t.Errorf("/metrics without a handler: %d, want 404", code)
	}
}

// An agent not yet connected is unhealthy.
func TestAnAgentThatHasNotConnectedIsUnhealthy(t *testing.T) {
	a, err := client.New(client.Config{Server: "127.0.0.1:1", Token: "relay_x", Target: "3000"})
	if err != nil {
		t.Fatal(err)
	}
	_, base := inspector(t, newStore(t), inspect.Options{Health: a.HealthHandler(), Metrics: a.MetricsHandler()})
	if code, body := do(t, "GET", base+"/healthz", "", nil); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz before connecting: %d %q, want 503", code, body)
	}
	m := relaytest.Scrape(t, base+"/metrics")
	if !m.Has("relay_agent_connected", nil) || m.Value("relay_agent_connected", nil) != 0 {
		t.Error("relay_agent_connected is not 0 before connecting")
	}
}
