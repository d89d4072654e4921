package provider

import (
	"bytes"
	"context"
	"crypto/x509"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// headerBlob encodes headers as "Key: value" lines, the fuzzer's way to vary
// names and values freely.
func headerBlob(h http.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}

func parseHeaderBlob(blob string) http.Header {
	h := http.Header{}
	for _, line := range strings.Split(blob, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok {
			h[k] = append(h[k], strings.TrimSpace(v)) // raw keys: recordings may not be canonical
		}
	}
	return h
}

// FuzzRecognizeVerify feeds arbitrary requests to everything that reads
// untrusted bytes here: none of it may panic, and whatever Verify says must
// be one of the four statuses.
func FuzzRecognizeVerify(f *testing.F) {
	now := time.Now()
	for _, p := range Names() {
		for _, e := range Events(p) {
			s, err := NewSample(p, e, now)
			if err != nil {
				f.Fatal(err)
			}
			if p == PayPal {
				_ = SignPayPal(s.Header, s.Body, providerSecrets[p], testCertURL, pki().leafKey, now)
			} else {
				_ = s.Sign(providerSecrets[p], now)
			}
			f.Add(s.Method, s.Path, headerBlob(s.Header), s.Body)
		}
	}
	f.Add("GET", "/x?crc_token=1&validationToken=2", "Stripe-Signature: t=,v1=,v1=zz\nX-Hub-Signature-256: sha256=", []byte("{"))
	f.Add("POST", "/", "Webhook-Id: a\nWebhook-Timestamp: 99999999999999999999\nWebhook-Signature: v1, v1,%%", []byte(`{"type":1}`))
	f.Add("POST", "/", "X-Slack-Signature: v0=\nX-Slack-Request-Timestamp: -9223372036854775808", []byte(`payload=%7B`))
	f.Add("POST", "/", "", []byte("bt_signature=%7C%26%7C&bt_payload=PG5vdGlm%0A"))

	leaf := pki().leaf
	secrets := map[string]string{}
	for k, v := range providerSecrets {
		secrets[k] = v
	}
	v := &Verifier{
		Secrets: secrets,
		Now:     func() time.Time { return now },
		// Never the network: the fuzzer may put any URL in Paypal-Cert-Url.
		PayPalCert: func(context.Context, string) (*x509.Certificate, error) { return leaf, nil },
	}
	f.Fuzz(func(t *testing.T, method, rawURL, headers string, body []byte) {
		u, _ := url.Parse(rawURL) // nil on error, which the package must accept too
		h := parseHeaderBlob(headers)
		orig := bytes.Clone(body)

		rec := Recognize(method, u, h, body)
		if rec.Provider != "" && lookup(rec.Provider) == nil {
			t.Fatalf("Recognize named unknown provider %q", rec.Provider)
		}
		IsHandshake(method, u, h, body)
		_ = CheckPayPalCertURL(rawURL)
		for _, p := range append(Names(), "", "nobody") {
			got := v.Verify(context.Background(), p, method, u, h, body)
			switch got.Status {
			case StatusValid, StatusInvalid, StatusUnsigned, StatusUnchecked:
			default:
				t.Fatalf("Verify(%s) status %q", p, got.Status)
			}
			_, _ = SignBody(p, secrets[p], h.Clone(), body, now)
		}
		if !bytes.Equal(body, orig) {
			t.Fatal("the body was modified in place")
		}
	})
}
