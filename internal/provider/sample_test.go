package provider

import (
	"context"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"
)

// recognizedEvent is what Recognize must say for each sample: the event name
// itself, but GitHub adds the body's action, GitLab names its header, and
// Shopify's Events sample is named apart from the classic one of its topic.
var recognizedEvent = map[string]map[string]string{
	Shopify: {"events:products/update": "products/update"},
	GitHub:  {"pull_request": "pull_request.opened", "issues": "issues.opened", "release": "release.published"},
	GitLab:  {"push": "Push Hook", "merge_request": "Merge Request Hook", "issue": "Issue Hook", "pipeline": "Pipeline Hook"},
}

func TestEveryProviderHasSamples(t *testing.T) {
	for _, p := range Names() {
		events := Events(p)
		want := 4
		if p == Typeform {
			want = 1 // Typeform sends one kind of event
		}
		if len(events) < want {
			t.Errorf("%s has %d sample events %v, want at least %d", p, len(events), events, want)
		}
	}
	for _, e := range []string{"payment_intent.succeeded", "checkout.session.completed", "customer.subscription.created", "invoice.paid"} {
		if _, err := NewSample(Stripe, e, time.Now()); err != nil {
			t.Errorf("Stripe sample %s: %v", e, err)
		}
	}
	for _, e := range []string{"push", "pull_request", "issues", "ping"} {
		if _, err := NewSample(GitHub, e, time.Now()); err != nil {
			t.Errorf("GitHub sample %s: %v", e, err)
		}
	}
}

// Every sample, signed with a secret, must verify as valid with that secret,
// be recognised as its provider and event, and fail with another secret.
func TestSampleSignVerifyRoundTrip(t *testing.T) {
	now := time.Now()
	p := pki()
	for _, provider := range Names() {
		for _, event := range Events(provider) {
			t.Run(provider+"/"+event, func(t *testing.T) {
				s, err := NewSample(provider, event, now)
				if err != nil {
					t.Fatal(err)
				}
				if s.Method != http.MethodPost || !strings.HasPrefix(s.Path, "/") {
					t.Errorf("request line %s %s", s.Method, s.Path)
				}
				if s.Header.Get("Content-Length") != "" {
					t.Error("sample sets Content-Length; the sender should")
				}
				checkBodyMatchesContentType(t, s)
				unsigned := append([]byte(nil), s.Body...)

				secret := providerSecrets[provider]
				if provider == PayPal {
					if err := s.Sign(secret, now); !errors.Is(err, ErrNeedsPrivateKey) {
						t.Fatalf("Sample.Sign for PayPal = %v, want ErrNeedsPrivateKey", err)
					}
					if err := SignPayPal(s.Header, s.Body, secret, testCertURL, p.leafKey, now); err != nil {
						t.Fatal(err)
					}
				} else if err := s.Sign(secret, now); err != nil {
					t.Fatal(err)
				}

				u := &url.URL{Path: s.Path}
				rec := Recognize(s.Method, u, s.Header, s.Body)
				wantEvent := event
				if m, ok := recognizedEvent[provider]; ok && m[event] != "" {
					wantEvent = m[event]
				}
				if rec.Provider != provider || rec.Event != wantEvent || (rec.EventID == "" && event != "url_verification") {
					t.Errorf("Recognize = %+v, want %s %s with an id", rec, provider, wantEvent)
				}
				if IsHandshake(s.Method, u, s.Header, s.Body) != (event == "url_verification") {
					t.Errorf("IsHandshake wrong for %s", event)
				}

				v := &Verifier{Secrets: map[string]string{provider: secret}, Now: fixedClock(now), PayPalCert: certFor(t, testCertURL)}
				if got := v.Verify(context.Background(), provider, s.Method, u, s.Header, s.Body); got.Status != StatusValid {
					t.Fatalf("signed sample: Verify = %+v, want valid", got)
				}
				v.Secrets = map[string]string{provider: otherSecrets[provider]}
				if got := v.Verify(context.Background(), provider, s.Method, u, s.Header, s.Body); got.Status != StatusInvalid {
					t.Fatalf("signed sample with another secret: Verify = %+v, want invalid", got)
				}
				if provider == Braintree && string(unsigned) == string(s.Body) {
					t.Error("signing a Braintree sample did not add bt_signature to the body")
				}
			})
		}
	}
}

func checkBodyMatchesContentType(t *testing.T, s Sample) {
	t.Helper()
	ct, _, err := mime.ParseMediaType(s.Header.Get("Content-Type"))
	if err != nil {
		t.Fatalf("Content-Type %q: %v", s.Header.Get("Content-Type"), err)
	}
	switch ct {
	case "application/json":
		if !json.Valid(s.Body) {
			t.Fatalf("body is not valid JSON:\n%s", s.Body)
		}
	case "application/x-www-form-urlencoded":
		if _, err := url.ParseQuery(string(s.Body)); err != nil {
			t.Fatalf("body is not a valid form: %v", err)
		}
	default:
		t.Fatalf("unexpected Content-Type %q", ct)
	}
}

func TestSamplesAreFresh(t *testing.T) {
	t1 := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)
	t2 := t1.Add(time.Hour)
	a, err := NewSample(Stripe, "payment_intent.succeeded", t1)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewSample(Stripe, "payment_intent.succeeded", t2)
	if err != nil {
		t.Fatal(err)
	}
	ra, rb := Recognize(a.Method, nil, a.Header, a.Body), Recognize(b.Method, nil, b.Header, b.Body)
	if ra.EventID == rb.EventID {
		t.Fatalf("two samples share the event id %q", ra.EventID)
	}
	var ev struct {
		Created int64 `json:"created"`
		Data    struct {
			Object struct {
				ID           string `json:"id"`
				ClientSecret string `json:"client_secret"`
			} `json:"object"`
		} `json:"data"`
	}
	if err := json.Unmarshal(b.Body, &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Created != t2.Unix() {
		t.Errorf("created = %d, want the send time %d", ev.Created, t2.Unix())
	}
	if !strings.HasPrefix(ev.Data.Object.ClientSecret, ev.Data.Object.ID+"_secret_") {
		t.Errorf("one sample's repeated id differs: %q vs %q", ev.Data.Object.ID, ev.Data.Object.ClientSecret)
	}

	gh, err := NewSample(GitHub, "push", t2)
	if err != nil {
		t.Fatal(err)
	}
	var push struct {
		After   string `json:"after"`
		Compare string `json:"compare"`
	}
	if err := json.Unmarshal(gh.Body, &push); err != nil {
		t.Fatal(err)
	}
	if len(push.After) != 40 || !strings.HasSuffix(push.Compare, "..."+push.After[:12]) {
		t.Errorf("compare URL %q does not end in the pushed commit %q", push.Compare, push.After)
	}

	sw, err := NewSample(StandardWebhooks, "user.created", t2)
	if err != nil {
		t.Fatal(err)
	}
	if got := sw.Header.Get("Webhook-Timestamp"); got != strconv.FormatInt(t2.Unix(), 10) {
		t.Errorf("webhook-timestamp = %q, want %d", got, t2.Unix())
	}
}

func TestNewSampleErrors(t *testing.T) {
	t.Run("unknown provider", func(t *testing.T) {
		_, err := NewSample("mailgun", "delivered", time.Now())
		if !errors.Is(err, ErrUnknownProvider) || !strings.Contains(err.Error(), "stripe") {
			t.Fatalf("err = %v, want ErrUnknownProvider listing the providers", err)
		}
		if Events("mailgun") != nil {
			t.Fatal("Events of an unknown provider is not nil")
		}
	})
	t.Run("unknown event lists the known ones", func(t *testing.T) {
		_, err := NewSample(Stripe, "charge.teleported", time.Now())
		if !errors.Is(err, ErrUnknownEvent) {
			t.Fatalf("err = %v, want ErrUnknownEvent", err)
		}
		for _, e := range Events(Stripe) {
			if !strings.Contains(err.Error(), e) {
				t.Errorf("error %q does not list %s", err, e)
			}
		}
	})
	t.Run("names are matched without regard to case", func(t *testing.T) {
		s, err := NewSample("PayPal", "payment.capture.completed", time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if s.Provider != PayPal || s.Event != "PAYMENT.CAPTURE.COMPLETED" {
			t.Fatalf("sample %s %s", s.Provider, s.Event)
		}
	})
}

func TestSignErrors(t *testing.T) {
	now := time.Now()
	tests := []struct {
		name     string
		provider string
		secret   string
		want     error
	}{
		{"unknown provider", "mailgun", "s", ErrUnknownProvider},
		{"Braintree signs inside the body", Braintree, providerSecrets[Braintree], ErrSignsBody},
		{"PayPal needs its private key", PayPal, providerSecrets[PayPal], ErrNeedsPrivateKey},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := Sign(tt.provider, tt.secret, http.Header{}, []byte(`{}`), now); !errors.Is(err, tt.want) {
				t.Fatalf("Sign = %v, want %v", err, tt.want)
			}
		})
	}
	if err := Sign(GitHub, "", http.Header{}, []byte(`{}`), now); err == nil {
		t.Error("Sign with an empty secret succeeded")
	}
	if err := Sign(StandardWebhooks, "whsec_***", http.Header{}, []byte(`{}`), now); err == nil {
		t.Error("Sign with a Standard Webhooks secret that is not base64 succeeded")
	}
	if _, err := SignBody(Braintree, providerSecrets[Braintree], http.Header{}, []byte(`{}`), now); err == nil {
		t.Error("SignBody for Braintree without bt_payload succeeded")
	}
	if _, err := SignBody(Braintree, "no-colon", http.Header{}, []byte("bt_payload=AA%3D%3D"), now); err == nil {
		t.Error("SignBody for Braintree with a malformed secret succeeded")
	}
}

func TestFixturesParse(t *testing.T) {
	all, err := fixtures()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range Names() {
		seen := map[string]bool{}
		for _, fx := range all[p] {
			if seen[strings.ToLower(fx.event)] {
				t.Errorf("%s: event %s appears twice", p, fx.event)
			}
			seen[strings.ToLower(fx.event)] = true
		}
	}
	if _, err := parseFixture("x.http", "POST /\n\n{}"); err == nil {
		t.Error("a fixture without an event line parsed")
	}
}
