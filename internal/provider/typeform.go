package provider

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"time"
)

// Typeform signs "Typeform-Signature: sha256=base64(HMAC-SHA256(secret, body))".
// A webhook without a secret carries no signature header, so Typeform is also
// recognised from its body.
var typeformScheme = &scheme{
	name:   Typeform,
	detect: func(d *delivery) bool { return d.has("Typeform-Signature") },
	detectBody: func(d *delivery) bool {
		if !bytes.Contains(d.body, []byte(`"form_response`)) {
			return false // not worth decoding
		}
		o := d.json()
		return strings.HasPrefix(o.str("event_type"), "form_response") && o["form_response"] != nil
	},
	describe: func(d *delivery) (string, string) {
		o := d.json()
		return o.str("event_type"), o.str("event_id")
	},
	signed:  func(d *delivery) bool { return d.has("Typeform-Signature") },
	missing: "missing Typeform-Signature header",
	verify: func(_ context.Context, _ *Verifier, d *delivery, secret string) Verdict {
		sig, ok := strings.CutPrefix(strings.TrimSpace(d.get("Typeform-Signature")), "sha256=")
		if !ok {
			return invalid(reasonMalformed)
		}
		return checkBase64(sig, []byte(secret), d.body)
	},
	sign: func(secret string, h http.Header, body []byte, _ time.Time) ([]byte, error) {
		h.Set("Typeform-Signature", "sha256="+base64.StdEncoding.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return body, nil
	},
}
