package provider

import (
	"crypto/rand"
	"fmt"
	"net/http"
	"time"
)

// Sign sets the provider's signature headers, and the timestamp headers the
// signature covers, on h for body, as the provider would at now. Braintree
// signs inside the body (ErrSignsBody: use SignBody) and PayPal with its own
// private key (ErrNeedsPrivateKey: use SignPayPal with a key of your own).
func Sign(provider, secret string, h http.Header, body []byte, now time.Time) error {
	s := lookup(provider)
	if s == nil {
		return fmt.Errorf("sign %q: %w", provider, ErrUnknownProvider)
	}
	if s.bodySigned {
		return fmt.Errorf("sign %s: %w; use SignBody", s.name, ErrSignsBody)
	}
	_, err := SignBody(provider, secret, h, body, now)
	return err
}

// SignBody is Sign for every provider but PayPal, returning the body to send:
// body itself, or for Braintree the form with bt_signature added.
func SignBody(provider, secret string, h http.Header, body []byte, now time.Time) ([]byte, error) {
	s := lookup(provider)
	if s == nil {
		return nil, fmt.Errorf("sign %q: %w", provider, ErrUnknownProvider)
	}
	if secret == "" && s.name != PayPal {
		return nil, fmt.Errorf("sign %s: empty secret", s.name)
	}
	signed, err := s.sign(secret, h, body, now)
	if err != nil {
		return nil, fmt.Errorf("sign %s: %w", s.name, err)
	}
	return signed, nil
}

const alphanumeric = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

// randomID returns prefix followed by n random alphanumerics, the shape of
// Stripe's and Svix's ids.
func randomID(prefix string, n int) string {
	b := make([]byte, n)
	rand.Read(b) // never fails
	for i := range b {
		b[i] = alphanumeric[int(b[i])%len(alphanumeric)]
	}
	return prefix + string(b)
}

// randomUUID returns a version 4 UUID.
func randomUUID() string {
	var b [16]byte
	rand.Read(b[:]) // never fails
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}
