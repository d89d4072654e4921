package main

import (
	"context"
	"encoding/base64"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/provider"
	"github.com/relaytunnel/relay/internal/relaytest"
)

// secretFor is a well-formed secret in each provider's own format.
func secretFor(p string) string {
	switch p {
	case provider.StandardWebhooks:
		return "whsec_" + base64.StdEncoding.EncodeToString([]byte("trigger-test-secret-32-bytes-ok!"))
	case provider.Stripe:
		return "whsec_trigger"
	case provider.Braintree:
		return "public_key:private_key"
	}
	return "trigger-secret"
}

func TestTriggerSendsASignedSampleForEveryProvider(t *testing.T) {
	for _, p := range provider.Names() {
		if p == provider.PayPal {
			continue // signed with PayPal's own key: see the next test
		}
		t.Run(p, func(t *testing.T) {
			secret := secretFor(p)
			var mu sync.Mutex
			var verdict provider.Verdict
			var gotProvider string
			app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				rec := provider.Recognize(r.Method, r.URL, r.Header, body)
				v := (&provider.Verifier{Secrets: map[string]string{p: secret}}).Verify(context.Background(), rec.Provider, r.Method, r.URL, r.Header, body)
				mu.Lock()
				verdict, gotProvider = v, rec.Provider
				mu.Unlock()
			}))
			defer app.Close()
			event := provider.Events(p)[0]
			code, out, errs := runCLI(t, "trigger", p, event, "--to", app.URL, "--secret", secret)
			if code != 0 || !strings.Contains(out, "200 OK") {
				t.Fatalf("exit %d, out %q, err %q", code, out, errs)
			}
			mu.Lock()
			defer mu.Unlock()
			if gotProvider != p || verdict.Status != provider.StatusValid {
				t.Errorf("the app recognised %q with verdict %+v; want %s, valid", gotProvider, verdict, p)
			}
		})
	}
}

func TestTriggerFailures(t *testing.T) {
	var seen sync.Map
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen.Store(r.URL.Path, r.Header.Get("Paypal-Transmission-Sig"))
		if strings.HasPrefix(r.URL.Path, "/broken") {
			http.Error(w, `{"error":"handler exploded"}`, http.StatusInternalServerError)
		}
	}))
	defer app.Close()
	tests := []struct {
		name     string
		args     []string
		wantCode int
		stdout   string
		stderr   string
	}{
		{"paypal goes out unsigned with a note", []string{"trigger", "paypal", "PAYMENT.CAPTURE.COMPLETED", "--to", app.URL + "/pp", "--secret", "WH-1"}, 0, "200 OK", "unsigned"},
		{"no secret sends unsigned and says so", []string{"trigger", "github", "push", "--to", app.URL + "/gh"}, 0, "200 OK", "unsigned"},
		{"an unknown provider lists the known ones", []string{"trigger", "acme", "x", "--to", app.URL}, 1, "", "known: stripe"},
		{"an unknown event lists the provider's events", []string{"trigger", "stripe", "nope", "--to", app.URL}, 1, "", "payment_intent.succeeded"},
		{"a 5xx from the handler fails and shows its body", []string{"trigger", "github", "push", "--to", app.URL + "/broken", "--secret", "s"}, 1, "handler exploded", "500"},
		{"an unreachable URL is one clear line", []string{"trigger", "github", "push", "--to", "http://127.0.0.1:1/x", "--secret", "s"}, 1, "", "could not reach"},
		{"--to is required", []string{"trigger", "github", "push"}, 1, "", "--to"},
		{"--list lists every provider", []string{"trigger", "--list"}, 0, "standardwebhooks", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errs := runCLI(t, tt.args...)
			if code != tt.wantCode || !strings.Contains(out, tt.stdout) || !strings.Contains(errs, tt.stderr) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out, errs, tt.wantCode, tt.stdout, tt.stderr)
			}
			if code != 0 && strings.Count(errs, "relay: ") != 1 {
				t.Errorf("want exactly one error line, got %q", errs)
			}
		})
	}
	if sig, ok := seen.Load("/pp"); !ok || sig != "" {
		t.Errorf("paypal sample: seen %v, signature %q; want it delivered unsigned", ok, sig)
	}
}

// startDev runs `relay dev` in this process on a free port until the test
// ends, and returns its public URL and console.
func startDev(t *testing.T, args ...string) (string, *relaytest.Buffer) {
	t.Helper()
	console := &relaytest.Buffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"dev", "--listen", "127.0.0.1:0", "--inspect", ""}, args...), console, console)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		if t.Failed() {
			t.Logf("relay dev console:\n%s", console.String())
		}
	})
	url := regexp.MustCompile(`relay dev: (https://\S+)`)
	// A minute: relay dev starts a server and an agent, on a busy machine.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(20 * time.Millisecond) {
		m := url.FindStringSubmatch(console.String())
		if m != nil && strings.Contains(console.String(), "connected via") {
			return m[1], console
		}
		if time.Now().After(deadline) {
			t.Fatal("relay dev did not connect within a minute")
		}
	}
}

// TestTriggerReachesRelayDevByItsPrintedURL is README's path on a machine
// whose resolver knows nothing of *.localhost (this one's, and Debian 12's
// by default): relay dev, then relay trigger to the printed URL with no
// --ca and no /etc/hosts line, and the printed curl line.
func TestTriggerReachesRelayDevByItsPrintedURL(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	t.Setenv("XDG_CONFIG_HOME", t.TempDir())
	var mu sync.Mutex
	var got []string
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.URL.Path+" "+r.Header.Get("Content-Type"))
		mu.Unlock()
	}))
	defer app.Close()
	_, appPort, _ := net.SplitHostPort(app.Listener.Addr().String())
	// The agent reaches the app by a *.localhost name too.
	url, console := startDev(t, "http://app.localhost:"+appPort, "--secret", "stripe=whsec_test123")

	code, out, errs := runCLI(t, "trigger", "stripe", "payment_intent.succeeded", "--to", url, "--secret", "whsec_test123")
	if code != 0 || !strings.Contains(out, "200 OK") {
		t.Fatalf("relay trigger --to %s: exit %d, %q %q", url, code, out, errs)
	}
	relaytest.WaitFor(t, "relay dev's console line", func() bool {
		return strings.Contains(console.String(), "signature valid")
	})

	curlLine := regexp.MustCompile(`try:\s+(curl .*)`).FindStringSubmatch(console.String())
	if curlLine == nil {
		t.Fatalf("relay dev printed no curl line")
	}
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("no curl to run the printed line with")
	}
	if out, err := exec.Command("sh", "-c", curlLine[1]).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", curlLine[1], err, out)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[1] != "/webhooks application/json" {
		t.Errorf("the app saw %q; want the trigger and the curl line's JSON POST to /webhooks", got)
	}
}

func TestTriggerSaysCAWhenTheCertificateIsNotTrusted(t *testing.T) {
	t.Setenv("XDG_STATE_HOME", t.TempDir())
	srv := devServer(t, t.TempDir()) // its CA is nowhere trigger looks
	_, port, _ := net.SplitHostPort(srv.Addr())
	for _, to := range []string{"https://dev.localhost:" + port, "https://127.0.0.1:" + port} {
		code, _, errs := runCLI(t, "trigger", "github", "push", "--to", to)
		if code != 1 || !strings.Contains(errs, "not trusted") || !strings.Contains(errs, "--ca") || strings.Count(errs, "relay: ") != 1 {
			t.Errorf("--to %s: exit %d, stderr %q; want one line naming --ca", to, code, errs)
		}
	}
	// --ca then works with the *.localhost URL, no resolver involved.
	code, out, errs := runCLI(t, "trigger", "github", "push", "--to", "https://nobody.localhost:"+port, "--ca", srv.DevCAPath())
	if code != 1 || !strings.Contains(out, "404") || !strings.Contains(out, "unknown_tunnel") {
		t.Errorf("with --ca: exit %d, %q %q; want the relay's own 404", code, out, errs)
	}
}
