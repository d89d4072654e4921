package provider

import (
	"context"
	"crypto/hmac"
	"crypto/x509"
	"fmt"
	"hash"
	"net/http"
	"net/url"
	"strconv"
	"time"
)

// Status is the outcome of a signature check.
type Status string

const (
	// StatusValid: the signature matches the secret (and the timestamp is fresh).
	StatusValid Status = "valid"
	// StatusInvalid: a signature is present and does not hold.
	StatusInvalid Status = "invalid"
	// StatusUnsigned: the provider's signature header is absent.
	StatusUnsigned Status = "unsigned"
	// StatusUnchecked: no secret is configured, the provider is unknown, or
	// the check could not be run (PayPal's certificate could not be fetched).
	StatusUnchecked Status = "unchecked"
)

// Verdict is a Status with a short human reason for anything but valid.
type Verdict struct {
	Status Status
	Reason string
}

// DefaultTolerance is how far a signed timestamp may be from now, either way.
const DefaultTolerance = 5 * time.Minute

// Verifier checks deliveries against the developer's secrets. The zero value
// is usable: it knows no secrets, uses the wall clock, DefaultTolerance and
// the default PayPal certificate fetcher.
type Verifier struct {
	// Secrets maps a provider name to its secret: Stripe's whsec_... used as
	// is, Standard Webhooks' whsec_<base64>, Braintree's
	// PUBLIC_KEY:PRIVATE_KEY, PayPal's webhook id, the shared secret or token
	// for the rest.
	Secrets map[string]string
	// Now is the clock timestamps are compared with; nil means time.Now.
	Now func() time.Time
	// Tolerance bounds timestamp skew in both directions; 0 means DefaultTolerance.
	Tolerance time.Duration
	// PayPalCert fetches the certificate named by Paypal-Cert-Url; nil means
	// DefaultPayPalCerts.Fetch, which only fetches over HTTPS from PayPal's
	// hosts and caches.
	PayPalCert func(ctx context.Context, certURL string) (*x509.Certificate, error)
}

// The defaults for a Verifier's zero fields are applied here, in one place.

func (v *Verifier) now() time.Time {
	if v.Now == nil {
		return time.Now()
	}
	return v.Now()
}

func (v *Verifier) tolerance() time.Duration {
	if v.Tolerance <= 0 {
		return DefaultTolerance
	}
	return v.Tolerance
}

func (v *Verifier) payPalCert() func(context.Context, string) (*x509.Certificate, error) {
	if v.PayPalCert == nil {
		return DefaultPayPalCerts.Fetch
	}
	return v.PayPalCert
}

// Verify checks a delivery's signature as the named provider makes it. A
// missing signature is reported as unsigned even when no secret is
// configured, since that is worth knowing on its own.
func (v *Verifier) Verify(ctx context.Context, provider string, method string, u *url.URL, h http.Header, body []byte) Verdict {
	if v == nil {
		v = &Verifier{}
	}
	s := lookup(provider)
	if s == nil {
		if provider == "" {
			return unchecked("provider unknown")
		}
		return unchecked(fmt.Sprintf("unknown provider %q", provider))
	}
	d := newDelivery(method, u, h, body)
	if !s.signed(d) {
		return Verdict{Status: StatusUnsigned, Reason: s.missing}
	}
	secret := v.Secrets[s.name]
	if secret == "" {
		return unchecked("no secret configured for " + s.name)
	}
	return s.verify(ctx, v, d, secret)
}

func valid() Verdict                  { return Verdict{Status: StatusValid} }
func invalid(reason string) Verdict   { return Verdict{Status: StatusInvalid, Reason: reason} }
func unchecked(reason string) Verdict { return Verdict{Status: StatusUnchecked, Reason: reason} }

const (
	reasonMismatch  = "signature mismatch"
	reasonMalformed = "malformed signature header"
)

// fresh judges a signed Unix timestamp against the clock; it is checked after
// the signature so a replayed genuine delivery says "stale", not "forged".
func (v *Verifier) fresh(unix int64) Verdict {
	skew := time.Unix(unix, 0).Sub(v.now())
	if tol := v.tolerance(); skew > tol || skew < -tol {
		return invalid(fmt.Sprintf("timestamp outside tolerance (%s)", skew.Round(time.Second)))
	}
	return valid()
}

func parseUnix(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil
}

// mac computes an HMAC over parts written in turn, so a large body is never
// copied to be prefixed.
func mac(h func() hash.Hash, key []byte, parts ...[]byte) []byte {
	m := hmac.New(h, key)
	for _, p := range parts {
		m.Write(p)
	}
	return m.Sum(nil)
}
