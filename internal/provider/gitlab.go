package provider

import (
	"context"
	"crypto/hmac"
	"net/http"
	"time"
)

// GitLab does not sign: it sends the secret token back in X-Gitlab-Token.
var gitlabScheme = &scheme{
	name:   GitLab,
	detect: func(d *delivery) bool { return d.has("X-Gitlab-Event") },
	describe: func(d *delivery) (string, string) {
		id := d.get("X-Gitlab-Event-UUID")
		if id == "" {
			id = d.get("Idempotency-Key")
		}
		return d.get("X-Gitlab-Event"), id
	},
	signed:  func(d *delivery) bool { return d.has("X-Gitlab-Token") },
	missing: "missing X-Gitlab-Token header",
	verify: func(_ context.Context, _ *Verifier, d *delivery, secret string) Verdict {
		if !hmac.Equal([]byte(d.get("X-Gitlab-Token")), []byte(secret)) {
			return invalid("token mismatch")
		}
		return valid()
	},
	sign: func(secret string, h http.Header, body []byte, _ time.Time) ([]byte, error) {
		h.Set("X-Gitlab-Token", secret)
		return body, nil
	},
}
