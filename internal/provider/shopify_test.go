package provider

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"
)

// Shopify's Events webhooks (2026) send the classic headers without X-:
// shopify-topic, shopify-hmac-sha256, shopify-event-id, ... (lower case on
// the wire; net/http canonicalises them).
func TestShopifyEventsWebhooksAreRecognisedAndVerified(t *testing.T) {
	// Known answer, computed apart from this package:
	//   printf '%s' "$body" | openssl dgst -sha256 -hmac shpss_relay_known_answer -binary | base64
	const (
		secret = "shpss_relay_known_answer"
		body   = `{"id":788032119674292922,"title":"Example T-Shirt","updated_at":"2026-04-01T12:00:00-04:00"}`
		sig    = "uh3kF9lssCR3JXUrh4k1I04fwBe+KtlQY9n5oZr/IaQ="
	)
	events := func(sig string) http.Header {
		h := http.Header{}
		for k, v := range map[string]string{
			"shopify-topic":        "products/update",
			"shopify-shop-domain":  "relay-test-store.myshopify.com",
			"shopify-api-version":  "2026-04",
			"shopify-event-id":     "7f4c1a0e-2b4d-4f7e-9d3c-1e2f3a4b5c6d",
			"shopify-handle":       "products-update",
			"shopify-triggered-at": "2026-04-01T16:00:00.000000000Z",
		} {
			h.Set(k, v)
		}
		if sig != "" {
			h.Set("shopify-hmac-sha256", sig)
		}
		return h
	}
	u := &url.URL{Path: "/webhooks/shopify"}
	rec := Recognize(http.MethodPost, u, events(sig), []byte(body))
	if rec != (Recognition{Shopify, "products/update", "7f4c1a0e-2b4d-4f7e-9d3c-1e2f3a4b5c6d"}) {
		t.Errorf("Recognize = %+v", rec)
	}
	// Only the signature header, as a proxy that drops the rest might.
	if got := Recognize(http.MethodPost, u, http.Header{"Shopify-Hmac-Sha256": {sig}}, []byte(body)); got.Provider != Shopify {
		t.Errorf("a delivery with only Shopify-Hmac-Sha256 is %+v", got)
	}

	v := &Verifier{Secrets: map[string]string{Shopify: secret}, Now: func() time.Time { return time.Now() }}
	tests := []struct {
		name   string
		header http.Header
		body   string
		want   Status
	}{
		{"the known answer is valid", events(sig), body, StatusValid},
		{"another body is invalid", events(sig), body + " ", StatusInvalid},
		{"no signature is unsigned", events(""), body, StatusUnsigned},
		{"the classic header wins where both are sent", func() http.Header {
			h := events("bm90IHRoZSBzaWduYXR1cmU=")
			h.Set("X-Shopify-Hmac-Sha256", sig)
			return h
		}(), body, StatusValid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := v.Verify(context.Background(), Shopify, http.MethodPost, u, tt.header, []byte(tt.body))
			if got.Status != tt.want {
				t.Errorf("Verify = %+v, want %s", got, tt.want)
			}
		})
	}

	// relay trigger's Events sample is signed in the Events form.
	s, err := NewSample(Shopify, "events:products/update", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Sign(secret, time.Now()); err != nil {
		t.Fatal(err)
	}
	if s.Header.Get("Shopify-Hmac-Sha256") == "" || s.Header.Get("X-Shopify-Hmac-Sha256") != "" {
		t.Errorf("the Events sample is signed with %v", s.Header)
	}
}
