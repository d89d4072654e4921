package provider

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// testPKI is a self-made CA and a PayPal-like message-signing certificate;
// nothing here is PayPal's.
type testPKI struct {
	root      *x509.Certificate
	roots     *x509.CertPool
	leaf      *x509.Certificate
	leafKey   *rsa.PrivateKey
	chainPEM  []byte // leaf then root, as PayPal serves it
	otherKey  *rsa.PrivateKey
	forgedPEM []byte // self-signed, right name, no chain
	wrongName []byte // chains to the root, wrong subject
}

var pki = sync.OnceValue(func() *testPKI {
	mustKey := func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	}
	mustCert := func(tmpl, parent *x509.Certificate, pub *rsa.PublicKey, signer *rsa.PrivateKey) *x509.Certificate {
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
		if err != nil {
			panic(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			panic(err)
		}
		return c
	}
	pemOf := func(certs ...*x509.Certificate) []byte {
		var b bytes.Buffer
		for _, c := range certs {
			pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
		}
		return b.Bytes()
	}
	notBefore := time.Now().Add(-time.Hour)
	notAfter := time.Now().Add(24 * time.Hour)

	rootKey := mustKey()
	rootTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "relay test root"},
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	root := mustCert(rootTmpl, rootTmpl, &rootKey.PublicKey, rootKey)

	leafKey := mustKey()
	leaf := mustCert(&x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "messageverificationcerts.sandbox.paypal.com", Organization: []string{"PayPal, Inc."}},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}, root, &leafKey.PublicKey, rootKey)

	otherKey := mustKey()
	forgedTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: "messageverificationcerts.paypal.com"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
	}
	forged := mustCert(forgedTmpl, forgedTmpl, &otherKey.PublicKey, otherKey)
	wrong := mustCert(&x509.Certificate{
		SerialNumber: big.NewInt(4),
		Subject:      pkix.Name{CommonName: "www.example.com"},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
	}, root, &otherKey.PublicKey, rootKey)

	roots := x509.NewCertPool()
	roots.AddCert(root)
	return &testPKI{
		root: root, roots: roots, leaf: leaf, leafKey: leafKey,
		chainPEM: pemOf(leaf, root), otherKey: otherKey,
		forgedPEM: pemOf(forged), wrongName: pemOf(wrong, root),
	}
})

const testCertURL = "https://api.sandbox.paypal.com/v1/notifications/certs/CERT-360caa42-fca2a594-a5cafa77"

// paypalHeaders signs as PayPal documents it, written out here apart from
// the package: RSA-SHA256 over "id|time|webhook_id|crc32 in decimal".
func paypalHeaders(t *testing.T, key *rsa.PrivateKey, webhookID string, body []byte) http.Header {
	t.Helper()
	id, when := "b2384410-f8d2-11eb-8fe9-e3c5a4bf8fba", "2025-03-14T15:09:26Z"
	msg := fmt.Sprintf("%s|%s|%s|%d", id, when, webhookID, crc32.ChecksumIEEE(body))
	digest := sha256.Sum256([]byte(msg))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return http.Header{
		"Paypal-Transmission-Id":   {id},
		"Paypal-Transmission-Time": {when},
		"Paypal-Transmission-Sig":  {base64.StdEncoding.EncodeToString(sig)},
		"Paypal-Cert-Url":          {testCertURL},
		"Paypal-Auth-Algo":         {"SHA256withRSA"},
	}
}

func certFor(t *testing.T, want string) func(context.Context, string) (*x509.Certificate, error) {
	return func(_ context.Context, certURL string) (*x509.Certificate, error) {
		if certURL != want {
			t.Errorf("fetched %q, want %q", certURL, want)
		}
		return pki().leaf, nil
	}
}

func TestVerifyPayPal(t *testing.T) {
	p := pki()
	webhookID := providerSecrets[PayPal]
	body := []byte(`{"id":"WH-1","event_type":"PAYMENT.CAPTURE.COMPLETED"}`)
	good := paypalHeaders(t, p.leafKey, webhookID, body)
	with := func(key, value string) http.Header {
		h := good.Clone()
		if value == "" {
			h.Del(key)
		} else {
			h.Set(key, value)
		}
		return h
	}
	fetchErr := func(err error) func(context.Context, string) (*x509.Certificate, error) {
		return func(context.Context, string) (*x509.Certificate, error) { return nil, err }
	}
	tests := []struct {
		name      string
		header    http.Header
		body      []byte
		webhookID string
		fetch     func(context.Context, string) (*x509.Certificate, error)
		want      Status
		reason    string
	}{
		{name: "valid signature is valid", header: good, body: body, webhookID: webhookID, want: StatusValid},
		{name: "tampered body is invalid", header: good, body: []byte(`{"id":"WH-2"}`), webhookID: webhookID, want: StatusInvalid, reason: reasonMismatch},
		{name: "wrong webhook id is invalid", header: good, body: body, webhookID: otherSecrets[PayPal], want: StatusInvalid, reason: reasonMismatch},
		{name: "signature by another key is invalid", header: paypalHeaders(t, p.otherKey, webhookID, body), body: body, webhookID: webhookID, want: StatusInvalid, reason: reasonMismatch},
		{name: "changed transmission time is invalid", header: with("Paypal-Transmission-Time", "2025-03-14T15:09:27Z"), body: body, webhookID: webhookID, want: StatusInvalid, reason: reasonMismatch},
		{name: "missing signature is unsigned", header: with("Paypal-Transmission-Sig", ""), body: body, webhookID: webhookID, want: StatusUnsigned, reason: "missing Paypal-Transmission-Sig header"},
		{name: "missing transmission id is invalid", header: with("Paypal-Transmission-Id", ""), body: body, webhookID: webhookID, want: StatusInvalid, reason: "missing Paypal-Transmission-Id header"},
		{name: "missing certificate URL is invalid", header: with("Paypal-Cert-Url", ""), body: body, webhookID: webhookID, want: StatusInvalid, reason: "missing Paypal-Cert-Url header"},
		{name: "unknown algorithm is invalid", header: with("Paypal-Auth-Algo", "SHA1withRSA"), body: body, webhookID: webhookID, want: StatusInvalid, reason: `unsupported Paypal-Auth-Algo "SHA1withRSA"`},
		{name: "signature that is not base64 is malformed", header: with("Paypal-Transmission-Sig", "%%%"), body: body, webhookID: webhookID, want: StatusInvalid, reason: reasonMalformed},
		{name: "no webhook id configured is unchecked", header: good, body: body, want: StatusUnchecked, reason: "no secret configured for paypal"},
		{name: "certificate that cannot be fetched leaves it unchecked", header: good, body: body, webhookID: webhookID, fetch: fetchErr(errors.New("dial tcp: i/o timeout")), want: StatusUnchecked, reason: "dial tcp: i/o timeout"},
		{name: "certificate URL off PayPal is invalid", header: good, body: body, webhookID: webhookID, fetch: fetchErr(ErrPayPalCertURL), want: StatusInvalid, reason: ErrPayPalCertURL.Error()},
		{name: "certificate that is not PayPal's is invalid", header: good, body: body, webhookID: webhookID, fetch: fetchErr(ErrPayPalCert), want: StatusInvalid, reason: ErrPayPalCert.Error()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fetch := tt.fetch
			if fetch == nil {
				fetch = certFor(t, testCertURL)
			}
			v := &Verifier{Secrets: map[string]string{PayPal: tt.webhookID}, PayPalCert: fetch}
			got := v.Verify(context.Background(), PayPal, http.MethodPost, nil, tt.header, tt.body)
			if got.Status != tt.want || got.Reason != tt.reason {
				t.Fatalf("Verify = %+v, want %s %q", got, tt.want, tt.reason)
			}
		})
	}
}

func TestSignPayPal(t *testing.T) {
	p := pki()
	body := []byte(`{"id":"WH-1"}`)
	now := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)
	h := http.Header{}
	if err := SignPayPal(h, body, "WH-ID", testCertURL, p.leafKey, now); err != nil {
		t.Fatal(err)
	}
	if got := h.Get("Paypal-Transmission-Time"); got != "2025-03-14T15:09:26Z" {
		t.Errorf("Paypal-Transmission-Time = %q", got)
	}
	if h.Get("Paypal-Transmission-Id") == "" || h.Get("Paypal-Auth-Algo") != "SHA256withRSA" || h.Get("Paypal-Cert-Url") != testCertURL {
		t.Errorf("headers not set as PayPal sets them: %v", h)
	}
	// Checked with the algorithm written out here, not with Verify.
	sig, _ := base64.StdEncoding.DecodeString(h.Get("Paypal-Transmission-Sig"))
	msg := fmt.Sprintf("%s|%s|%s|%d", h.Get("Paypal-Transmission-Id"), h.Get("Paypal-Transmission-Time"), "WH-ID", crc32.ChecksumIEEE(body))
	digest := sha256.Sum256([]byte(msg))
	if err := rsa.VerifyPKCS1v15(&p.leafKey.PublicKey, crypto.SHA256, digest[:], sig); err != nil {
		t.Fatalf("SignPayPal's signature does not verify independently: %v", err)
	}
	if err := SignPayPal(http.Header{}, body, "WH-ID", testCertURL, nil, now); !errors.Is(err, ErrNeedsPrivateKey) {
		t.Fatalf("SignPayPal without a key: %v, want ErrNeedsPrivateKey", err)
	}
}

// roundTripFunc lets a test answer HTTP requests without a network.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

func respond(status int, body []byte, header http.Header) *http.Response {
	if header == nil {
		header = http.Header{}
	}
	return &http.Response{StatusCode: status, Status: http.StatusText(status), Header: header, Body: io.NopCloser(bytes.NewReader(body))}
}

// noNetwork fails the test if anything is fetched at all.
func noNetwork(t *testing.T) *http.Client {
	return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		t.Errorf("fetched %s; nothing should have been fetched", r.URL)
		return nil, errors.New("no network in tests")
	})}
}

func TestPayPalCertsRefuseHostsOffPayPal(t *testing.T) {
	for _, u := range []string{
		"https://evil.example.com/v1/notifications/certs/CERT-1",
		"https://api.paypal.com.evil.example.com/cert.pem",
		"https://evilpaypal.com/cert.pem",
		"https://paypal.com@evil.example.com/cert.pem",
		"https://user:pass@api.paypal.com/cert.pem",
		"http://api.paypal.com/v1/notifications/certs/CERT-1",
		"https://api.paypal.com:8443/v1/notifications/certs/CERT-1",
		"https://127.0.0.1/cert.pem",
		"file:///etc/ssl/certs/ca-certificates.crt",
		"https://.paypal.com/cert.pem",
		"::not a url",
		"",
	} {
		t.Run(u, func(t *testing.T) {
			c := &PayPalCerts{Client: noNetwork(t)}
			_, err := c.Fetch(context.Background(), u)
			if !errors.Is(err, ErrPayPalCertURL) {
				t.Fatalf("Fetch(%q) = %v, want ErrPayPalCertURL", u, err)
			}
		})
	}
}

func TestDefaultVerifierRefusesCertURLOffPayPal(t *testing.T) {
	// The zero Verifier uses DefaultPayPalCerts; the URL check comes before
	// any fetch, so this touches no network.
	body := []byte(`{}`)
	h := paypalHeaders(t, pki().leafKey, "WH-ID", body)
	h.Set("Paypal-Cert-Url", "https://attacker.example/cert.pem")
	v := &Verifier{Secrets: map[string]string{PayPal: "WH-ID"}}
	got := v.Verify(context.Background(), PayPal, http.MethodPost, nil, h, body)
	if got.Status != StatusInvalid || !strings.Contains(got.Reason, ErrPayPalCertURL.Error()) {
		t.Fatalf("Verify = %+v, want invalid for a non-PayPal certificate URL", got)
	}
}

func TestPayPalCertsFetch(t *testing.T) {
	p := pki()
	serve := func(calls *atomic.Int32, status int, body []byte, header http.Header) *http.Client {
		return &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
			calls.Add(1)
			if !strings.HasSuffix(r.URL.Hostname(), ".paypal.com") || r.URL.Scheme != "https" {
				t.Errorf("fetched %s", r.URL)
			}
			return respond(status, body, header), nil
		})}
	}
	t.Run("PayPal's chain is accepted and then served from the cache", func(t *testing.T) {
		var calls atomic.Int32
		c := &PayPalCerts{Client: serve(&calls, http.StatusOK, p.chainPEM, nil), Roots: p.roots}
		for range 3 {
			cert, err := c.Fetch(context.Background(), testCertURL)
			if err != nil {
				t.Fatal(err)
			}
			if !cert.Equal(p.leaf) {
				t.Fatal("Fetch returned another certificate than the leaf")
			}
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("fetched %d times, want 1", n)
		}
	})
	t.Run("an expired cached certificate is fetched again", func(t *testing.T) {
		var calls atomic.Int32
		now := time.Now()
		c := &PayPalCerts{Client: serve(&calls, http.StatusOK, p.chainPEM, nil), Roots: p.roots, Now: func() time.Time { return now }}
		if _, err := c.Fetch(context.Background(), testCertURL); err != nil {
			t.Fatal(err)
		}
		now = now.Add(48 * time.Hour)
		if _, err := c.Fetch(context.Background(), testCertURL); !errors.Is(err, ErrPayPalCert) {
			t.Fatalf("Fetch after expiry = %v, want ErrPayPalCert", err)
		}
		if n := calls.Load(); n != 2 {
			t.Fatalf("fetched %d times, want 2", n)
		}
	})
	refusals := []struct {
		name    string
		status  int
		body    []byte
		wantErr error
	}{
		{"a self-signed certificate in PayPal's name is refused", http.StatusOK, p.forgedPEM, ErrPayPalCert},
		{"a trusted certificate with another name is refused", http.StatusOK, p.wrongName, ErrPayPalCert},
		{"a response without a certificate is refused", http.StatusOK, []byte("<html>hello</html>"), ErrPayPalCert},
		{"an oversized response is refused", http.StatusOK, bytes.Repeat([]byte("A"), maxCertBytes+1), ErrPayPalCert},
	}
	for _, tt := range refusals {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			c := &PayPalCerts{Client: serve(&calls, tt.status, tt.body, nil), Roots: p.roots}
			if _, err := c.Fetch(context.Background(), testCertURL); !errors.Is(err, tt.wantErr) {
				t.Fatalf("Fetch = %v, want %v", err, tt.wantErr)
			}
		})
	}
	t.Run("a server error is a fetch failure, not a forgery", func(t *testing.T) {
		var calls atomic.Int32
		c := &PayPalCerts{Client: serve(&calls, http.StatusBadGateway, nil, nil), Roots: p.roots}
		_, err := c.Fetch(context.Background(), testCertURL)
		if err == nil || errors.Is(err, ErrPayPalCert) || errors.Is(err, ErrPayPalCertURL) {
			t.Fatalf("Fetch = %v, want a plain fetch error", err)
		}
	})
	t.Run("a redirect off PayPal is not followed", func(t *testing.T) {
		var calls atomic.Int32
		redirect := http.Header{"Location": {"https://attacker.example/cert.pem"}}
		c := &PayPalCerts{Client: serve(&calls, http.StatusFound, nil, redirect), Roots: p.roots}
		_, err := c.Fetch(context.Background(), testCertURL)
		if !errors.Is(err, ErrPayPalCertURL) {
			t.Fatalf("Fetch = %v, want ErrPayPalCertURL", err)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("made %d requests, want 1", n)
		}
	})
	t.Run("a verifier using the fetcher accepts PayPal's signature", func(t *testing.T) {
		var calls atomic.Int32
		c := &PayPalCerts{Client: serve(&calls, http.StatusOK, p.chainPEM, nil), Roots: p.roots}
		body := []byte(`{"id":"WH-1"}`)
		v := &Verifier{Secrets: map[string]string{PayPal: "WH-ID"}, PayPalCert: c.Fetch}
		got := v.Verify(context.Background(), PayPal, http.MethodPost, nil, paypalHeaders(t, p.leafKey, "WH-ID", body), body)
		if got.Status != StatusValid {
			t.Fatalf("Verify = %+v", got)
		}
	})
}
