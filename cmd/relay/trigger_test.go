package main

import (
	"context"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/relaytunnel/relay/internal/provider"
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
