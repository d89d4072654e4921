package provider

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"time"
)

// Shopify signs "X-Shopify-Hmac-Sha256: base64(HMAC-SHA256(secret, body))"
// with the app's client secret.
var shopifyScheme = &scheme{
	name: Shopify,
	detect: func(d *delivery) bool {
		return d.has("X-Shopify-Topic") || d.has("X-Shopify-Hmac-Sha256")
	},
	describe: func(d *delivery) (string, string) {
		id := d.get("X-Shopify-Webhook-Id")
		if id == "" {
			id = d.get("X-Shopify-Event-Id")
		}
		return d.get("X-Shopify-Topic"), id
	},
	signed:  func(d *delivery) bool { return d.has("X-Shopify-Hmac-Sha256") },
	missing: "missing X-Shopify-Hmac-Sha256 header",
	verify: func(_ context.Context, _ *Verifier, d *delivery, secret string) Verdict {
		return checkBase64(d.get("X-Shopify-Hmac-Sha256"), []byte(secret), d.body)
	},
	sign: func(secret string, h http.Header, body []byte, _ time.Time) ([]byte, error) {
		h.Set("X-Shopify-Hmac-Sha256", base64.StdEncoding.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return body, nil
	},
}

// checkBase64 checks a base64(HMAC-SHA256(key, body)) value, the form Shopify
// and Typeform share.
func checkBase64(value string, key, body []byte) Verdict {
	got, err := base64.StdEncoding.DecodeString(strings.TrimSpace(value))
	if err != nil {
		return invalid(reasonMalformed)
	}
	if !hmac.Equal(got, mac(sha256.New, key, body)) {
		return invalid(reasonMismatch)
	}
	return valid()
}
