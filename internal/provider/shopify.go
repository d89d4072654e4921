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
// with the app's client secret. Its newer Events webhooks send the same
// headers without the X- prefix (Shopify-Hmac-Sha256, Shopify-Topic,
// Shopify-Event-Id, ..., after RFC 6648) and sign the same way; both forms
// are read, the classic one first, as Shopify's own libraries do.
var shopifyScheme = &scheme{
	name: Shopify,
	detect: func(d *delivery) bool {
		return shopifyHeader(d, "Topic") != "" || shopifyHeader(d, "Hmac-Sha256") != ""
	},
	describe: func(d *delivery) (string, string) {
		id := shopifyHeader(d, "Webhook-Id")
		if id == "" {
			id = shopifyHeader(d, "Event-Id")
		}
		return shopifyHeader(d, "Topic"), id
	},
	signed:  func(d *delivery) bool { return shopifyHeader(d, "Hmac-Sha256") != "" },
	missing: "missing X-Shopify-Hmac-Sha256 (or Shopify-Hmac-Sha256) header",
	verify: func(_ context.Context, _ *Verifier, d *delivery, secret string) Verdict {
		return checkBase64(shopifyHeader(d, "Hmac-Sha256"), []byte(secret), d.body)
	},
	sign: func(secret string, h http.Header, body []byte, _ time.Time) ([]byte, error) {
		name := "X-Shopify-Hmac-Sha256"
		if h.Get("X-Shopify-Topic") == "" && h.Get("Shopify-Topic") != "" {
			name = "Shopify-Hmac-Sha256" // an Events delivery signs in its own form
		}
		h.Set(name, base64.StdEncoding.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return body, nil
	},
}

// shopifyHeader is Shopify's header X-Shopify-NAME, or the Events form
// Shopify-NAME.
func shopifyHeader(d *delivery, name string) string {
	if v := d.get("X-Shopify-" + name); v != "" {
		return v
	}
	return d.get("Shopify-" + name)
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
