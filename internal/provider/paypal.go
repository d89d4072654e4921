package provider

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// PayPal signs with its RSA key over "transmission id|transmission
// time|webhook id|crc32(body)" (the CRC in decimal) and names the certificate
// holding the public key in Paypal-Cert-Url. The developer's secret is the
// webhook id.
var paypalScheme = &scheme{
	name: PayPal,
	detect: func(d *delivery) bool {
		return d.has("Paypal-Transmission-Id") || d.has("Paypal-Transmission-Sig")
	},
	describe: func(d *delivery) (string, string) {
		o := d.json()
		return o.str("event_type"), o.str("id")
	},
	signed:  func(d *delivery) bool { return d.has("Paypal-Transmission-Sig") },
	missing: "missing Paypal-Transmission-Sig header",
	verify:  verifyPayPal,
	sign: func(string, http.Header, []byte, time.Time) ([]byte, error) {
		return nil, fmt.Errorf("%w: only PayPal holds it (SignPayPal signs with a key of your own)", ErrNeedsPrivateKey)
	},
}

const payPalAuthAlgo = "SHA256withRSA"

func payPalMessage(transmissionID, transmissionTime, webhookID string, body []byte) []byte {
	crc := strconv.FormatUint(uint64(crc32.ChecksumIEEE(body)), 10)
	return []byte(transmissionID + "|" + transmissionTime + "|" + webhookID + "|" + crc)
}

func verifyPayPal(ctx context.Context, v *Verifier, d *delivery, webhookID string) Verdict {
	id, when, certURL := d.get("Paypal-Transmission-Id"), d.get("Paypal-Transmission-Time"), d.get("Paypal-Cert-Url")
	switch {
	case id == "":
		return invalid("missing Paypal-Transmission-Id header")
	case when == "":
		return invalid("missing Paypal-Transmission-Time header")
	case certURL == "":
		return invalid("missing Paypal-Cert-Url header")
	}
	if algo := d.get("Paypal-Auth-Algo"); algo != "" && !strings.EqualFold(algo, payPalAuthAlgo) {
		return invalid(fmt.Sprintf("unsupported Paypal-Auth-Algo %q", algo))
	}
	sig, err := base64.StdEncoding.DecodeString(strings.TrimSpace(d.get("Paypal-Transmission-Sig")))
	if err != nil {
		return invalid(reasonMalformed)
	}
	cert, err := v.payPalCert()(ctx, certURL)
	if err != nil {
		// A certificate from the wrong place or signed by the wrong party is
		// a forgery; a network failure only means we could not look.
		if errors.Is(err, ErrPayPalCertURL) || errors.Is(err, ErrPayPalCert) {
			return invalid(err.Error())
		}
		return unchecked(err.Error())
	}
	pub, ok := cert.PublicKey.(*rsa.PublicKey)
	if !ok {
		return invalid("PayPal certificate does not hold an RSA key")
	}
	digest := sha256.Sum256(payPalMessage(id, when, webhookID, d.body))
	if rsa.VerifyPKCS1v15(pub, crypto.SHA256, digest[:], sig) != nil {
		return invalid(reasonMismatch)
	}
	return valid()
}

// SignPayPal signs body the way PayPal does, but with key, and points
// Paypal-Cert-Url at certURL; only a Verifier whose PayPalCert returns the
// matching certificate accepts it. Transmission id and time already on h are
// kept; missing ones are made up.
func SignPayPal(h http.Header, body []byte, webhookID, certURL string, key *rsa.PrivateKey, now time.Time) error {
	if key == nil {
		return fmt.Errorf("sign paypal: %w", ErrNeedsPrivateKey)
	}
	id := h.Get("Paypal-Transmission-Id")
	if id == "" {
		id = randomUUID()
		h.Set("Paypal-Transmission-Id", id)
	}
	when := h.Get("Paypal-Transmission-Time")
	if when == "" {
		when = now.UTC().Format(time.RFC3339)
		h.Set("Paypal-Transmission-Time", when)
	}
	digest := sha256.Sum256(payPalMessage(id, when, webhookID, body))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		return fmt.Errorf("sign paypal: %w", err)
	}
	h.Set("Paypal-Auth-Algo", payPalAuthAlgo)
	h.Set("Paypal-Cert-Url", certURL)
	h.Set("Paypal-Transmission-Sig", base64.StdEncoding.EncodeToString(sig))
	return nil
}
