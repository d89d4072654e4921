package main

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"

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
