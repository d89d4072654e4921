package provider

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"
)

var (
	// ErrPayPalCertURL: Paypal-Cert-Url does not point at PayPal over HTTPS.
	// Fetching from anywhere else would let a forger sign with a key of their own.
	ErrPayPalCertURL = errors.New("certificate URL is not an https URL on a PayPal host")
	// ErrPayPalCert: the fetched certificate is not PayPal's message-signing
	// certificate (wrong subject, expired, or not chaining to a trusted root).
	ErrPayPalCert = errors.New("not a PayPal message-signing certificate")
)

// DefaultPayPalCerts is the fetcher a Verifier without PayPalCert uses; it is
// shared so its cache serves every Verifier in the process.
var DefaultPayPalCerts = &PayPalCerts{}

// PayPalCerts fetches and caches PayPal's webhook signing certificates. The
// zero value is ready to use.
type PayPalCerts struct {
	// Client fetches certificates; nil means a client with a 10 s timeout.
	// Its redirects are confined to PayPal hosts whatever it says.
	Client *http.Client
	// Roots are the trusted roots; nil means the system's.
	Roots *x509.CertPool
	// Now is the clock for certificate validity; nil means time.Now.
	Now func() time.Time

	mu    sync.Mutex
	cache map[string]*x509.Certificate
}

const (
	maxCertBytes  = 64 << 10 // a PEM chain is a few KiB
	maxCachedCert = 32       // PayPal rotates rarely; a handful of URLs is plenty
)

// CheckPayPalCertURL reports whether certURL may be fetched: https, on
// paypal.com or a subdomain, default port, no credentials.
func CheckPayPalCertURL(certURL string) error {
	u, err := url.Parse(certURL)
	if err != nil {
		return fmt.Errorf("%w: %q", ErrPayPalCertURL, certURL)
	}
	host := strings.ToLower(u.Hostname())
	ok := u.Scheme == "https" && u.User == nil && (u.Port() == "" || u.Port() == "443") &&
		strings.HasSuffix(host, ".paypal.com") && !slices.Contains(strings.Split(host, "."), "")
	if !ok {
		return fmt.Errorf("%w: %q", ErrPayPalCertURL, certURL)
	}
	return nil
}

// Fetch returns the signing certificate at certURL, from the cache while it
// is still valid.
func (c *PayPalCerts) Fetch(ctx context.Context, certURL string) (*x509.Certificate, error) {
	if err := CheckPayPalCertURL(certURL); err != nil {
		return nil, err
	}
	now := time.Now
	if c.Now != nil {
		now = c.Now
	}
	c.mu.Lock()
	cert := c.cache[certURL]
	c.mu.Unlock()
	if cert != nil && now().Before(cert.NotAfter) && now().After(cert.NotBefore) {
		return cert, nil
	}
	cert, err := c.fetch(ctx, certURL, now())
	if err != nil {
		return nil, err
	}
	c.mu.Lock()
	if c.cache == nil || len(c.cache) >= maxCachedCert {
		c.cache = make(map[string]*x509.Certificate)
	}
	c.cache[certURL] = cert
	c.mu.Unlock()
	return cert, nil
}

func (c *PayPalCerts) fetch(ctx context.Context, certURL string, now time.Time) (*x509.Certificate, error) {
	client := http.Client{Timeout: 10 * time.Second}
	if c.Client != nil {
		client = *c.Client
	}
	client.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 3 {
			return errors.New("too many redirects")
		}
		return CheckPayPalCertURL(req.URL.String())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, certURL, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch PayPal certificate %s: %w", certURL, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch PayPal certificate %s: %w", certURL, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch PayPal certificate %s: status %s", certURL, resp.Status)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxCertBytes+1))
	if err != nil {
		return nil, fmt.Errorf("fetch PayPal certificate %s: %w", certURL, err)
	}
	if len(data) > maxCertBytes {
		return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrPayPalCert, certURL, maxCertBytes)
	}
	return c.check(data, now)
}

// check parses a PEM chain (leaf first) and accepts the leaf only if it
// chains to a trusted root and names PayPal's message-verification host, the
// rule PayPal's own SDKs applied.
func (c *PayPalCerts) check(data []byte, now time.Time) (*x509.Certificate, error) {
	var chain []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrPayPalCert, err)
		}
		chain = append(chain, cert)
	}
	if len(chain) == 0 {
		return nil, fmt.Errorf("%w: no certificate in response", ErrPayPalCert)
	}
	leaf := chain[0]
	intermediates := x509.NewCertPool()
	for _, cert := range chain[1:] {
		intermediates.AddCert(cert)
	}
	opts := x509.VerifyOptions{
		Roots:         c.Roots,
		Intermediates: intermediates,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
	if _, err := leaf.Verify(opts); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPayPalCert, err)
	}
	if !payPalSigningName(leaf) {
		return nil, fmt.Errorf("%w: subject %q", ErrPayPalCert, leaf.Subject.String())
	}
	return leaf, nil
}

func payPalSigningName(cert *x509.Certificate) bool {
	names := append([]string{cert.Subject.CommonName}, cert.DNSNames...)
	for _, n := range names {
		n = strings.ToLower(n)
		if strings.HasPrefix(n, "messageverificationcerts") && strings.HasSuffix(n, ".paypal.com") {
			return true
		}
	}
	return false
}
