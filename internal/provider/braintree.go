package provider

import (
	"bytes"
	"context"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/xml"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Braintree posts a form with bt_payload (base64 of an XML notification) and
// bt_signature ("public_key|hex(HMAC-SHA1(SHA1(private_key), payload))",
// several pairs joined by "&" when more than one key applies). The secret is
// "PUBLIC_KEY:PRIVATE_KEY". The signature is in the body, so signing
// rewrites the body.
var braintreeScheme = &scheme{
	name:       Braintree,
	detect:     func(*delivery) bool { return false },
	detectBody: func(d *delivery) bool { _, ok := braintreeFields(d.body); return ok },
	describe:   describeBraintree,
	signed: func(d *delivery) bool {
		f, _ := braintreeFields(d.body)
		return f.Get("bt_signature") != ""
	},
	missing:    "missing bt_signature form field",
	verify:     verifyBraintree,
	sign:       signBraintree,
	bodySigned: true,
	wire:       braintreeWire,
}

// braintreeFields decodes the form when it carries a bt_payload; the
// substring test keeps other bodies from being parsed as forms at all.
func braintreeFields(body []byte) (url.Values, bool) {
	if !bytes.Contains(body, []byte("bt_payload=")) {
		return nil, false
	}
	f := form(body)
	return f, f.Get("bt_payload") != ""
}

var errBraintreeSecret = errors.New("braintree secret is not PUBLIC_KEY:PRIVATE_KEY")

func braintreeKeys(secret string) (public, private string, err error) {
	public, private, ok := strings.Cut(secret, ":")
	if !ok || public == "" || private == "" {
		return "", "", errBraintreeSecret
	}
	return public, private, nil
}

func braintreeMAC(private string, payload []byte) []byte {
	key := sha1.Sum([]byte(private))
	return mac(sha1.New, key[:], payload)
}

// braintreePayloadOK is the SDKs' guard: a payload is base64 with newlines.
func braintreePayloadOK(payload string) bool {
	for _, r := range payload {
		ok := r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' ||
			r == '+' || r == '/' || r == '=' || r == '\n'
		if !ok {
			return false
		}
	}
	return true
}

func verifyBraintree(_ context.Context, _ *Verifier, d *delivery, secret string) Verdict {
	public, private, err := braintreeKeys(secret)
	if err != nil {
		return unchecked(err.Error())
	}
	f, _ := braintreeFields(d.body)
	payload := f.Get("bt_payload")
	if !braintreePayloadOK(payload) {
		return invalid("malformed bt_payload")
	}
	var candidates [][]byte
	for _, pair := range strings.Split(f.Get("bt_signature"), "&") {
		key, sig, ok := strings.Cut(pair, "|")
		if !ok || key != public {
			continue
		}
		if raw, err := hex.DecodeString(sig); err == nil {
			candidates = append(candidates, raw)
		}
	}
	if len(candidates) == 0 {
		return invalid("no signature for public key " + public)
	}
	// The SDKs also accept the payload with a newline added, since some
	// form decoders trim the one base64 encoders end with.
	if anyEqual(candidates, braintreeMAC(private, []byte(payload))) ||
		anyEqual(candidates, braintreeMAC(private, []byte(payload+"\n"))) {
		return valid()
	}
	return invalid(reasonMismatch)
}

func signBraintree(secret string, _ http.Header, body []byte, _ time.Time) ([]byte, error) {
	public, private, err := braintreeKeys(secret)
	if err != nil {
		return nil, err
	}
	f, ok := braintreeFields(body)
	if !ok {
		return nil, errors.New("braintree body has no bt_payload field")
	}
	f.Set("bt_signature", public+"|"+hex.EncodeToString(braintreeMAC(private, []byte(f.Get("bt_payload")))))
	return []byte(f.Encode()), nil
}

type braintreeNotification struct {
	Kind      string `xml:"kind"`
	Timestamp string `xml:"timestamp"`
}

// describeBraintree reads the kind from the XML inside bt_payload. The
// notification has no id of its own, so the id is a digest of the payload:
// a retry sends the same payload and so gets the same id.
func describeBraintree(d *delivery) (string, string) {
	f, ok := braintreeFields(d.body)
	if !ok {
		return "", ""
	}
	payload := f.Get("bt_payload")
	sum := sha256.Sum256([]byte(strings.TrimSpace(payload)))
	id := "bt_" + hex.EncodeToString(sum[:12])
	raw, err := base64.StdEncoding.DecodeString(payload) // the decoder skips the newlines
	if err != nil {
		return "", id
	}
	var n braintreeNotification
	if xml.Unmarshal(raw, &n) != nil {
		return "", id
	}
	return strings.TrimSpace(n.Kind), id
}

// braintreeWire wraps a notification's XML the way Braintree sends it:
// base64 in 60-character lines, each ending in a newline (Ruby's
// Base64.encode64), as the bt_payload form field.
func braintreeWire(notification []byte) []byte {
	enc := base64.StdEncoding.EncodeToString(notification)
	var b strings.Builder
	for len(enc) > 60 {
		b.WriteString(enc[:60])
		b.WriteByte('\n')
		enc = enc[60:]
	}
	b.WriteString(enc)
	b.WriteByte('\n')
	return []byte(url.Values{"bt_payload": {b.String()}}.Encode())
}
