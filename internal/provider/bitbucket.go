package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"time"
)

// Bitbucket signs "X-Hub-Signature: sha256=hex(HMAC-SHA256(secret, body))".
var bitbucketScheme = &scheme{
	name:   Bitbucket,
	detect: func(d *delivery) bool { return d.has("X-Event-Key") },
	describe: func(d *delivery) (string, string) {
		id := d.get("X-Request-UUID")
		if id == "" {
			id = d.get("X-Hook-UUID")
		}
		return d.get("X-Event-Key"), id
	},
	signed:  func(d *delivery) bool { return d.has("X-Hub-Signature") },
	missing: "missing X-Hub-Signature header",
	verify: func(_ context.Context, _ *Verifier, d *delivery, secret string) Verdict {
		return checkAlgoHex(d.get("X-Hub-Signature"), []byte(secret), d.body)
	},
	sign: func(secret string, h http.Header, body []byte, _ time.Time) ([]byte, error) {
		h.Set("X-Hub-Signature", "sha256="+hex.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return body, nil
	},
}
