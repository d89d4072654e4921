package provider

import (
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"net/http"
	"strings"
	"time"
)

// GitHub signs "X-Hub-Signature-256: sha256=hex(HMAC-SHA256(secret, body))"
// and, for old receivers, the same with SHA-1 in X-Hub-Signature. The SHA-256
// header is preferred; the SHA-1 one is checked only when it is alone.
var githubScheme = &scheme{
	name:   GitHub,
	detect: func(d *delivery) bool { return d.has("X-GitHub-Event") },
	describe: func(d *delivery) (string, string) {
		event := d.get("X-GitHub-Event")
		if action := d.json().str("action"); event != "" && action != "" {
			event += "." + action
		}
		return event, d.get("X-GitHub-Delivery")
	},
	signed: func(d *delivery) bool {
		return d.has("X-Hub-Signature-256") || d.has("X-Hub-Signature")
	},
	missing: "missing X-Hub-Signature-256 header",
	verify: func(_ context.Context, _ *Verifier, d *delivery, secret string) Verdict {
		sig := d.get("X-Hub-Signature-256")
		if sig == "" {
			sig = d.get("X-Hub-Signature")
		}
		return checkAlgoHex(sig, []byte(secret), d.body)
	},
	sign: func(secret string, h http.Header, body []byte, _ time.Time) ([]byte, error) {
		h.Set("X-Hub-Signature", "sha1="+hex.EncodeToString(mac(sha1.New, []byte(secret), body)))
		h.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac(sha256.New, []byte(secret), body)))
		return body, nil
	},
}

// checkAlgoHex checks an "ALGO=hex(HMAC-ALGO(key, body))" value, the form
// GitHub and Bitbucket share.
func checkAlgoHex(value string, key, body []byte) Verdict {
	algo, digest, ok := strings.Cut(strings.TrimSpace(value), "=")
	if !ok {
		return invalid(reasonMalformed)
	}
	var h func() hash.Hash
	switch strings.ToLower(algo) {
	case "sha256":
		h = sha256.New
	case "sha1":
		h = sha1.New
	default:
		return invalid(reasonMalformed)
	}
	got, err := hex.DecodeString(digest)
	if err != nil {
		return invalid(reasonMalformed)
	}
	if !hmac.Equal(got, mac(h, key, body)) {
		return invalid(reasonMismatch)
	}
	return valid()
}

// anyEqual reports whether any candidate equals want, comparing in constant
// time per candidate.
func anyEqual(candidates [][]byte, want []byte) bool {
	found := false
	for _, c := range candidates {
		if hmac.Equal(c, want) {
			found = true
		}
	}
	return found
}
