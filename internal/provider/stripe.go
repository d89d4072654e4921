package provider

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Stripe signs "t=TS,v1=hex(HMAC-SHA256(secret, TS.body))". The whole whsec_
// string is the HMAC key; during a secret roll the header carries one v1 per
// active secret.
var stripeScheme = &scheme{
	name:   Stripe,
	detect: func(d *delivery) bool { return d.has("Stripe-Signature") },
	// Stripe always signs; an unsigned Stripe event is a sample or a
	// hand-made replay, still worth naming.
	detectBody: func(d *delivery) bool {
		// Most bodies are no Stripe event: skip decoding those.
		if !bytes.Contains(d.body, []byte(`"evt_`)) || !bytes.Contains(d.body, []byte(`"event"`)) {
			return false
		}
		o := d.json()
		return o.str("object") == "event" && strings.HasPrefix(o.str("id"), "evt_") && o.str("type") != ""
	},
	describe: func(d *delivery) (string, string) {
		o := d.json()
		return o.str("type"), o.str("id")
	},
	signed:  func(d *delivery) bool { return d.has("Stripe-Signature") },
	missing: "missing Stripe-Signature header",
	verify:  verifyStripe,
	sign:    signStripe,
}

// parseStripeSignature splits the header into its timestamp, as written, and
// its v1 signatures; other schemes (v0, test-mode extras) are ignored.
func parseStripeSignature(header string) (ts string, v1 [][]byte, ok bool) {
	for _, item := range strings.Split(header, ",") {
		k, val, found := strings.Cut(strings.TrimSpace(item), "=")
		if !found {
			continue
		}
		switch k {
		case "t":
			ts = val
		case "v1":
			if sig, err := hex.DecodeString(val); err == nil {
				v1 = append(v1, sig)
			}
		}
	}
	if _, isNum := parseUnix(ts); !isNum || len(v1) == 0 {
		return "", nil, false
	}
	return ts, v1, true
}

func verifyStripe(_ context.Context, v *Verifier, d *delivery, secret string) Verdict {
	ts, sigs, ok := parseStripeSignature(d.get("Stripe-Signature"))
	if !ok {
		return invalid(reasonMalformed)
	}
	want := mac(sha256.New, []byte(secret), []byte(ts), []byte("."), d.body)
	if !anyEqual(sigs, want) {
		return invalid(reasonMismatch)
	}
	unix, _ := parseUnix(ts)
	return v.fresh(unix)
}

func signStripe(secret string, h http.Header, body []byte, now time.Time) ([]byte, error) {
	ts := strconv.FormatInt(now.Unix(), 10)
	sig := mac(sha256.New, []byte(secret), []byte(ts), []byte("."), body)
	h.Set("Stripe-Signature", fmt.Sprintf("t=%s,v1=%s", ts, hex.EncodeToString(sig)))
	return body, nil
}
