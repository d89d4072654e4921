package provider

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Slack signs "X-Slack-Signature: v0=hex(HMAC-SHA256(signing secret,
// "v0:" + TS + ":" + body))" with TS in X-Slack-Request-Timestamp.
var slackScheme = &scheme{
	name: Slack,
	detect: func(d *delivery) bool {
		return d.has("X-Slack-Signature") || d.has("X-Slack-Request-Timestamp")
	},
	describe: describeSlack,
	signed:   func(d *delivery) bool { return d.has("X-Slack-Signature") },
	missing:  "missing X-Slack-Signature header",
	verify:   verifySlack,
	sign: func(secret string, h http.Header, body []byte, now time.Time) ([]byte, error) {
		ts := strconv.FormatInt(now.Unix(), 10)
		h.Set("X-Slack-Request-Timestamp", ts)
		h.Set("X-Slack-Signature", "v0="+hex.EncodeToString(slackMAC(secret, ts, body)))
		return body, nil
	},
}

func slackMAC(secret, ts string, body []byte) []byte {
	return mac(sha256.New, []byte(secret), []byte("v0:"+ts+":"), body)
}

func verifySlack(_ context.Context, v *Verifier, d *delivery, secret string) Verdict {
	ts := d.get("X-Slack-Request-Timestamp")
	unix, ok := parseUnix(ts)
	if !ok {
		if ts == "" {
			return invalid("missing X-Slack-Request-Timestamp header")
		}
		return invalid("malformed X-Slack-Request-Timestamp header")
	}
	digest, ok := strings.CutPrefix(strings.TrimSpace(d.get("X-Slack-Signature")), "v0=")
	if !ok {
		return invalid(reasonMalformed)
	}
	got, err := hex.DecodeString(digest)
	if err != nil {
		return invalid(reasonMalformed)
	}
	if !hmac.Equal(got, slackMAC(secret, ts, d.body)) {
		return invalid(reasonMismatch)
	}
	return v.fresh(unix)
}

// describeSlack reads the three shapes Slack posts: Events API JSON, a slash
// command form, and an interaction form whose payload field is JSON.
func describeSlack(d *delivery) (string, string) {
	if o := d.json(); o != nil {
		event := o.str("type")
		if inner := o.obj("event").str("type"); event == "event_callback" && inner != "" {
			event = inner
		}
		return event, o.str("event_id")
	}
	f := form(d.body)
	if p := jsonObject([]byte(f.Get("payload"))); p != nil {
		return p.str("type"), p.str("trigger_id")
	}
	if f.Get("command") != "" {
		return "slash_command", f.Get("trigger_id")
	}
	return "", ""
}
