package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

func TestServerMetricsListenFlag(t *testing.T) {
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	t.Run("defaults to loopback in the cobra tree and reads RELAY_METRICS_LISTEN", func(t *testing.T) {
		cmd, _, err := newRootCmd().Find([]string{"server"})
		if err != nil {
			t.Fatal(err)
		}
		f := cmd.Flags().Lookup("metrics-listen")
		if f == nil || f.DefValue != server.DefaultMetricsListen || !strings.HasPrefix(f.DefValue, "127.0.0.1:") {
			t.Fatalf("relay server --metrics-listen: %+v, want a flag defaulting to %s", f, server.DefaultMetricsListen)
		}
		t.Setenv("RELAY_METRICS_LISTEN", "127.0.0.1:1234")
		if err := applyEnvAndConfig(cmd); err != nil {
			t.Fatal(err)
		}
		if got := cmd.Flags().Lookup("metrics-listen").Value.String(); got != "127.0.0.1:1234" {
			t.Errorf("with RELAY_METRICS_LISTEN set, --metrics-listen is %q", got)
		}
	})
	t.Run("serves metrics and healthz where it says", func(t *testing.T) {
		console := &relaytest.Buffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, []string{"server", "--dev", "--listen", "127.0.0.1:0", "--data", t.TempDir(),
				"--metrics-listen", "127.0.0.1:0"}, console, console)
		}()
		defer func() { cancel(); <-done }()
		banner := regexp.MustCompile(`metrics: (http://\S+)/metrics`)
		relaytest.WaitFor(t, "the metrics line in the banner", func() bool { return banner.MatchString(console.String()) })
		base := banner.FindStringSubmatch(console.String())[1]
		m := relaytest.Scrape(t, base+"/metrics")
		if !m.Has("relay_sessions", map[string]string{"transport": "quic"}) {
			t.Errorf("no relay_sessions in the scrape of %s", base)
		}
		resp, err := http.Get(base + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("/healthz: %s", resp.Status)
		}
	})
	t.Run("is off in --dev unless given", func(t *testing.T) {
		console := &relaytest.Buffer{}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan int, 1)
		go func() {
			done <- run(ctx, []string{"server", "--dev", "--listen", "127.0.0.1:0", "--data", t.TempDir()}, console, console)
		}()
		relaytest.WaitFor(t, "the banner", func() bool { return strings.Contains(console.String(), "dev CA:") })
		cancel()
		<-done
		if strings.Contains(console.String(), "metrics:") {
			t.Errorf("relay server --dev serves metrics unasked:\n%s", console.String())
		}
	})
	for _, addr := range []string{"9190", "nonsense", "127.0.0.1"} {
		t.Run("refuses "+addr+" with exit 2", func(t *testing.T) {
			code, out, errs := runCLI(t, "server", "--dev", "--listen", "127.0.0.1:0", "--data", t.TempDir(), "--metrics-listen", addr)
			if code != 2 || !strings.Contains(errs, "metrics") || strings.Contains(out, "https+agents") {
				t.Errorf("--metrics-listen %s: exit %d, stdout %q, stderr %q; want exit 2 naming --metrics-listen before serving", addr, code, out, errs)
			}
		})
	}
}

// TestTheGrafanaDashboardParsesAndUsesOnlyMetricsRelayExposes scrapes a
// live server and agent after a delivery, and holds every expression of
// deploy/grafana-relay.json to the metric names they expose.
func TestTheGrafanaDashboardParsesAndUsesOnlyMetricsRelayExposes(t *testing.T) {
	b, err := os.ReadFile("../../deploy/grafana-relay.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		UID, Title string
		Schema     int `json:"schemaVersion"`
		Panels     []dashPanel
		Templating struct {
			List []struct {
				Name  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("deploy/grafana-relay.json: %v", err)
	}
	if dash.UID == "" || dash.Title == "" || dash.Schema == 0 || len(dash.Panels) == 0 {
		t.Fatalf("not a Grafana dashboard: uid %q, title %q, schemaVersion %d, %d panels", dash.UID, dash.Title, dash.Schema, len(dash.Panels))
	}
	var exprs []string
	ids := map[int]bool{}
	var walk func([]dashPanel)
	walk = func(ps []dashPanel) {
		for _, p := range ps {
			if ids[p.ID] {
				t.Errorf("panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X+g.W > 24 {
				t.Errorf("panel %q: gridPos %+v does not fit a 24-column row", p.Title, g)
			}
			walk(p.Panels)
			if p.Type == "row" {
				continue
			}
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, q := range p.Targets {
				if q.Expr == "" || q.RefID == "" {
					t.Errorf("panel %q: a target without expr or refId", p.Title)
				}
				exprs = append(exprs, q.Expr)
			}
		}
	}
	walk(dash.Panels)
	for _, v := range dash.Templating.List {
		if q, ok := v.Query.(map[string]any); ok {
			exprs = append(exprs, fmt.Sprint(q["query"]))
		}
	}

	// A live server and agent, after one delivery.
	srv := relaytest.StartServer(t, func(c *server.Config) { c.MetricsListen = "127.0.0.1:0" })
	a := relaytest.RunAgent(t, relaytest.AgentConfig(srv, "tcp", relaytest.CreateToken(t, srv, "dash"), "dash", relaytest.EchoApp(t).URL))
	agentMetrics := httptest.NewServer(a.MetricsHandler())
	defer agentMetrics.Close()
	resp, err := relaytest.ProviderClient(t, srv).Post(relaytest.TunnelURL(srv, "dash", "/"), "application/json", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	exposed := map[string]bool{}
	relaytest.WaitFor(t, "the delivery in both scrapes", func() bool {
		clear(exposed)
		for _, u := range []string{"http://" + srv.MetricsAddr() + "/metrics", agentMetrics.URL} {
			for name, f := range relaytest.Scrape(t, u) {
				exposed[name] = true
				if f.GetType() == dto.MetricType_HISTOGRAM {
					exposed[name+"_bucket"], exposed[name+"_sum"], exposed[name+"_count"] = true, true, true
				}
			}
		}
		return exposed["relay_delivery_duration_seconds_bucket"] && exposed["relay_agent_delivery_duration_seconds_bucket"]
	})
	used := map[string]bool{}
	for _, e := range exprs {
		for _, name := range regexp.MustCompile(`\brelay_[a-z0-9_]+`).FindAllString(e, -1) {
			used[name] = true
			if !exposed[name] {
				t.Errorf("the dashboard queries %s, which neither the server nor the agent exposes (in %q)", name, e)
			}
		}
	}
	for _, want := range []string{"relay_deliveries_total", "relay_delivery_duration_seconds_bucket", "relay_sessions",
		"relay_queue_depth", "relay_queue_oldest_age_seconds", "relay_certificate_expiry_timestamp_seconds", "relay_agent_reconnects_total"} {
		if !used[want] {
			t.Errorf("the dashboard has no panel on %s", want)
		}
	}
}

type dashPanel struct {
	ID      int `json:"id"`
	Type    string
	Title   string
	GridPos struct{ X, Y, W, H int }
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string
	}
	Panels []dashPanel // a collapsed row's
}
