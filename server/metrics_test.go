package server_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
	"github.com/relaytunnel/relay/server/store"
)

// withMetrics serves the server's metrics on a free loopback port.
func withMetrics(c *server.Config) { c.MetricsListen = "127.0.0.1:0" }

func metricsURL(srv *server.Server) string { return "http://" + srv.MetricsAddr() + "/metrics" }

// waitMetric scrapes until name{labels} reaches want: the edge counts a
// delivery once its answer is written, just after the provider has it.
func waitMetric(t *testing.T, srv *server.Server, name string, labels map[string]string, want float64) relaytest.Metrics {
	t.Helper()
	var m relaytest.Metrics
	relaytest.WaitFor(t, name+" to be "+ftoa(want), func() bool {
		m = relaytest.Scrape(t, metricsURL(srv))
		return m.Value(name, labels) == want
	})
	return m
}

func ftoa(f float64) string { return strconv.FormatFloat(f, 'g', -1, 64) }

func TestMetricsCountDeliveriesByStatusAndTransportAndSessionsComeAndGo(t *testing.T) {
	for _, tr := range relaytest.Transports {
		t.Run(tr, func(t *testing.T) {
			srv := relaytest.StartServer(t, withMetrics, func(c *server.Config) { c.MaxBody = 1 << 10 })
			tok := relaytest.CreateToken(t, srv, "shop")
			app := relaytest.App(t, func(w http.ResponseWriter, r *http.Request) {
				io.Copy(io.Discard, r.Body)
				if r.URL.Path == "/fail" {
					http.Error(w, "broken", http.StatusInternalServerError)
					return
				}
				w.WriteHeader(http.StatusCreated)
				io.WriteString(w, "created")
			})
			_, stop := relaytest.ConnectAgent(t, relaytest.AgentConfig(srv, tr, tok, "shop", app))
			hc := relaytest.ProviderClient(t, srv)
			post := func(path, body string) int {
				t.Helper()
				resp, err := hc.Post(relaytest.TunnelURL(srv, "shop", path), "application/json", strings.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				return resp.StatusCode
			}
			for range 3 {
				if got := post("/ok", `{"a":1}`); got != http.StatusCreated {
					t.Fatalf("delivery: %d", got)
				}
			}
			for range 2 {
				if got := post("/fail", `{}`); got != http.StatusInternalServerError {
					t.Fatalf("failing delivery: %d", got)
				}
			}
			if got := post("/big", strings.Repeat("x", 2<<10)); got != http.StatusRequestEntityTooLarge {
				t.Fatalf("oversized delivery: %d", got)
			}

			m := waitMetric(t, srv, "relay_delivery_duration_seconds", map[string]string{"tunnel": "shop", "transport": tr}, 6)
			for _, c := range []struct {
				code string
				want float64
			}{{"201", 3}, {"500", 2}, {"413", 1}} {
				if got := m.Value("relay_deliveries_total", map[string]string{"tunnel": "shop", "code": c.code, "transport": tr}); got != c.want {
					t.Errorf("relay_deliveries_total{code=%s,transport=%s} = %v, want %v", c.code, tr, got, c.want)
				}
			}
			if got := m.Value("relay_request_bytes_total", map[string]string{"tunnel": "shop"}); got != 3*7+2*2 {
				t.Errorf("relay_request_bytes_total = %v, want %d (the bodies forwarded)", got, 3*7+2*2)
			}
			if got := m.Value("relay_response_bytes_total", map[string]string{"tunnel": "shop"}); got != 3*7+2*7 {
				t.Errorf("relay_response_bytes_total = %v, want %d", got, 3*7+2*7)
			}
			if got := m.Value("relay_sessions", map[string]string{"transport": tr}); got != 1 {
				t.Errorf("relay_sessions{transport=%s} = %v with the agent connected, want 1", tr, got)
			}
			if got := m.Value("relay_sessions_total", map[string]string{"transport": tr}); got != 1 {
				t.Errorf("relay_sessions_total{transport=%s} = %v, want 1", tr, got)
			}

			stop()
			waitMetric(t, srv, "relay_sessions", map[string]string{"transport": tr}, 0)

			// Offline: queued (202), and the queue's depth and age show it.
			if got := post("/later", `{"b":2}`); got != http.StatusAccepted {
				t.Fatalf("offline delivery: %d, want 202", got)
			}
			m = waitMetric(t, srv, "relay_deliveries_total", map[string]string{"tunnel": "shop", "code": "202", "transport": "offline"}, 1)
			if got := m.Value("relay_queue_depth", map[string]string{"tunnel": "shop"}); got != 1 {
				t.Errorf("relay_queue_depth{tunnel=shop} = %v with one delivery queued, want 1", got)
			}
			if !m.Has("relay_queue_oldest_age_seconds", map[string]string{"tunnel": "shop"}) {
				t.Error("no relay_queue_oldest_age_seconds{tunnel=shop}")
			}
		})
	}
}

func TestMetricsShowRejectedHandshakesAndTheDevCAsExpiry(t *testing.T) {
	srv := relaytest.StartServer(t, withMetrics)
	relaytest.CreateToken(t, srv, "mine")
	_, errc := relaytest.StartAgent(t, relaytest.AgentConfig(srv, "tcp", "relay_not-a-token", "mine", "http://127.0.0.1:1"))
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("an agent with a bad token was admitted")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("an agent with a bad token was neither admitted nor refused in 30s")
	}
	m := waitMetric(t, srv, "relay_session_rejections_total", map[string]string{"code": "bad_token"}, 1)
	exp := m.Value("relay_certificate_expiry_timestamp_seconds", map[string]string{"name": "dev-ca"})
	if exp < float64(time.Now().Add(24*time.Hour).Unix()) {
		t.Errorf("relay_certificate_expiry_timestamp_seconds{name=dev-ca} = %v, want the dev CA's expiry, in the future", exp)
	}
	if got := m.Value("relay_queue_depth", map[string]string{"tunnel": "mine"}); got != 0 || !m.Has("relay_queue_depth", map[string]string{"tunnel": "mine"}) {
		t.Errorf("relay_queue_depth{tunnel=mine} = %v (present %v); want 0 for every reserved name", got, m.Has("relay_queue_depth", map[string]string{"tunnel": "mine"}))
	}
	if !m.Has("go_goroutines", nil) || !m.Has("process_cpu_seconds_total", nil) {
		t.Error("no Go or process collector metrics")
	}
}

// queueStatsDown is a store whose queue cannot be read at scrape time.
type queueStatsDown struct{ server.Store }

func (queueStatsDown) QueueStats(context.Context) (map[string]store.QueueStat, error) {
	return nil, errors.New("database went away")
}

func TestMetricsCountOneScrapeErrorAndShowNoQueueWhenTheQueueCannotBeRead(t *testing.T) {
	st, err := server.OpenStore(context.Background(), server.StoreConfig{DataDir: t.TempDir(), Create: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	srv := relaytest.StartServer(t, withMetrics, func(c *server.Config) { c.Store = queueStatsDown{st} })
	relaytest.CreateToken(t, srv, "mine", "yours")
	m := relaytest.Scrape(t, metricsURL(srv))
	if got := m.Value("relay_metrics_scrape_errors", nil); got != 1 {
		t.Errorf("relay_metrics_scrape_errors = %v with the queue unreadable for two names, want 1 (one read failed)", got)
	}
	for _, name := range []string{"relay_queue_depth", "relay_queue_oldest_age_seconds"} {
		if m.Has(name, map[string]string{"tunnel": "mine"}) {
			t.Errorf("%s{tunnel=mine} is shown although the queue could not be read: a 0 would pass for an empty queue", name)
		}
	}
}

func TestMetricsHealthzIsOKWhileServingAndTheListenerStopsWithTheServer(t *testing.T) {
	srv, err := server.New(context.Background(), server.Config{Dev: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), MetricsListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	addr := srv.MetricsAddr()
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || string(body) != "ok\n" {
		t.Errorf("/healthz: %d %q, want 200 ok", resp.StatusCode, body)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get("http://" + addr + "/healthz"); err == nil {
		t.Error("the metrics listener still answers after Shutdown")
	}
}

func TestMetricsListenIsOffByDefaultAndRefusesABadAddress(t *testing.T) {
	srv := relaytest.StartServer(t)
	if a := srv.MetricsAddr(); a != "" {
		t.Errorf("metrics on %s without MetricsListen; want off (tests start many servers)", a)
	}
	for _, addr := range []string{"9190", "localhost", "127.0.0.1:notaport"} {
		_, err := server.New(context.Background(), server.Config{Dev: true, Listen: "127.0.0.1:0", DataDir: t.TempDir(), MetricsListen: addr})
		if !errors.Is(err, server.ErrConfig) && (err == nil || !strings.Contains(err.Error(), "metrics")) {
			t.Errorf("MetricsListen %q: %v, want a configuration error naming --metrics-listen", addr, err)
		}
	}
}

func TestMetricsShowTheExpiryOfATLSCertFile(t *testing.T) {
	dir := t.TempDir()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	notAfter := time.Now().Add(60 * 24 * time.Hour).Truncate(time.Second)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "relay.test"},
		DNSNames:     []string{"relay.test", "*.relay.test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600)
	srv := relaytest.StartServerWith(t, server.Config{
		Domain: "relay.test", Listen: "127.0.0.1:0", HTTPListen: "off", DataDir: dir,
		TLSCert: certFile, TLSKey: keyFile, MetricsListen: "127.0.0.1:0",
	})
	m := relaytest.Scrape(t, metricsURL(srv))
	if got := m.Value("relay_certificate_expiry_timestamp_seconds", map[string]string{"name": "relay.test"}); got != float64(notAfter.Unix()) {
		t.Errorf("relay_certificate_expiry_timestamp_seconds{name=relay.test} = %v, want %d (the --tls-cert file's NotAfter)", got, notAfter.Unix())
	}
}

func TestAMetricsAddressReachableFromElsewhereIsServedButWarnedAbout(t *testing.T) {
	for _, tt := range []struct {
		addr string
		warn bool
	}{{"127.0.0.1:0", false}, {"0.0.0.0:0", true}} {
		t.Run(tt.addr, func(t *testing.T) {
			logs := &relaytest.Buffer{}
			srv := relaytest.StartServer(t, func(c *server.Config) {
				c.MetricsListen = tt.addr
				c.Logger = slog.New(slog.NewTextHandler(logs, nil))
			})
			if srv.MetricsAddr() == "" {
				t.Fatal("no metrics listener")
			}
			if got := strings.Contains(logs.String(), "level=WARN") && strings.Contains(logs.String(), "non-loopback"); got != tt.warn {
				t.Errorf("MetricsListen %s: warned %v, want %v; log:\n%s", tt.addr, got, tt.warn, logs)
			}
		})
	}
}
