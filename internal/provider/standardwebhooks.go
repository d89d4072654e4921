package provider

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Standard Webhooks (Svix and the senders that follow the spec) sign
// "webhook-signature: v1,base64(HMAC-SHA256(key, id.TS.body))", where key is
// the base64 part of the whsec_ secret. The header lists several
// space-separated signatures during a key rotation, and Svix itself sends the
// same three headers under svix-* names.
var standardWebhooksScheme = &scheme{
	name: StandardWebhooks,
	detect: func(d *delivery) bool {
		id, ts, sig := standardHeaders(d)
		return id != "" && (ts != "" || sig != "")
	},
	describe: func(d *delivery) (string, string) {
		id, _, _ := standardHeaders(d)
		return d.json().str("type"), id
	},
	signed: func(d *delivery) bool {
		_, _, sig := standardHeaders(d)
		return sig != ""
	},
	missing: "missing webhook-signature header",
	verify:  verifyStandard,
	sign:    signStandard,
}

// standardHeaders returns the id, timestamp and signature headers, from the
// webhook-* set when any of it is present and from svix-* otherwise.
func standardHeaders(d *delivery) (id, ts, sig string) {
	id, ts, sig = d.get("Webhook-Id"), d.get("Webhook-Timestamp"), d.get("Webhook-Signature")
	if id != "" || ts != "" || sig != "" {
		return id, ts, sig
	}
	return d.get("Svix-Id"), d.get("Svix-Timestamp"), d.get("Svix-Signature")
}

var errStandardSecret = errors.New("standardwebhooks secret is not whsec_<base64>")

func standardKey(secret string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) == 0 {
		return nil, errStandardSecret
	}
	return key, nil
}

func standardMAC(key []byte, id, ts string, body []byte) []byte {
	return mac(sha256.New, key, []byte(id+"."+ts+"."), body)
}

func verifyStandard(_ context.Context, v *Verifier, d *delivery, secret string) Verdict {
	key, err := standardKey(secret)
	if err != nil {
		return unchecked(err.Error())
	}
	id, ts, sigs := standardHeaders(d)
	if id == "" {
		return invalid("missing webhook-id header")
	}
	unix, ok := parseUnix(ts)
	if !ok {
		if ts == "" {
			return invalid("missing webhook-timestamp header")
		}
		return invalid("malformed webhook-timestamp header")
	}
	var candidates [][]byte
	for _, entry := range strings.Fields(sigs) {
		version, sig, ok := strings.Cut(entry, ",")
		if !ok || version != "v1" {
			continue // v1a (asymmetric) and future versions are not ours to check
		}
		if raw, err := base64.StdEncoding.DecodeString(sig); err == nil {
			candidates = append(candidates, raw)
		}
	}
	if len(candidates) == 0 {
		return invalid("no v1 signature in webhook-signature header")
	}
	if !anyEqual(candidates, standardMAC(key, id, ts, d.body)) {
		return invalid(reasonMismatch)
	}
	return v.fresh(unix)
}

// signStandard keeps the message id already on h (a sample carries one) and
// makes one up otherwise.
func signStandard(secret string, h http.Header, body []byte, now time.Time) ([]byte, error) {
	key, err := standardKey(secret)
	if err != nil {
		return nil, err
	}
	id := h.Get("Webhook-Id")
	if id == "" {
		id = randomID("msg_", 27)
		h.Set("Webhook-Id", id)
	}
	ts := strconv.FormatInt(now.Unix(), 10)
	h.Set("Webhook-Timestamp", ts)
	h.Set("Webhook-Signature", "v1,"+base64.StdEncoding.EncodeToString(standardMAC(key, id, ts, body)))
	return body, nil
}
