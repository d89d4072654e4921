package certs_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/server/certs"
)

// testCA issues certificates for static-file tests.
type testCA struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue returns the leaf's PEM for key's public half, valid until notAfter.
func (ca *testCA) issue(t *testing.T, key crypto.Signer, notAfter time.Time, names ...string) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: names[0]},
		DNSNames:     names,
		NotBefore:    time.Now().Add(-48 * time.Hour),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func ecKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func pkcs8PEM(t *testing.T, key crypto.Signer) []byte {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func certsFromPEM(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, errors.New("no certificate in PEM")
	}
	return out, nil
}

func TestLoadStaticRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	key := ecKey(t)
	later := time.Now().Add(24 * time.Hour)
	goodCert := writeFile(t, dir, "good.pem", ca.issue(t, key, later, "relay.test", "*.relay.test"))
	goodKey := writeFile(t, dir, "good-key.pem", pkcs8PEM(t, key))
	otherKey := writeFile(t, dir, "other-key.pem", pkcs8PEM(t, ecKey(t)))
	garbage := writeFile(t, dir, "garbage.pem", []byte("-----BEGIN NOTHING-----\nnot base64\n"))
	otherDomain := writeFile(t, dir, "other.pem", ca.issue(t, key, later, "abc.example.com"))
	apexOnly := writeFile(t, dir, "apex.pem", ca.issue(t, key, later, "relay.test"))
	expired := writeFile(t, dir, "expired.pem", ca.issue(t, key, time.Now().Add(-time.Hour), "relay.test", "*.relay.test"))
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name      string
		cert, key string
		want      string
	}{
		{"missing certificate file", missing, goodKey, "read tls certificate: open " + missing},
		{"missing key file", goodCert, missing, "read tls key: open " + missing},
		{"garbage certificate PEM", garbage, goodKey, "tls certificate " + garbage + ": no PEM CERTIFICATE block found"},
		{"garbage key PEM", goodCert, garbage, "tls key " + garbage + ": no PEM PRIVATE KEY block found"},
		{"certificate given as key", goodCert, goodCert, "tls key " + goodCert + ": no PEM PRIVATE KEY block found"},
		{"key not matching the certificate", goodCert, otherKey, "tls key " + otherKey + " does not match certificate " + goodCert},
		{"certificate for another domain", otherDomain, goodKey, "tls certificate " + otherDomain + " covers abc.example.com, not both relay.test and *.relay.test"},
		{"certificate without the wildcard", apexOnly, goodKey, "covers relay.test, not both relay.test and *.relay.test"},
		{"expired certificate", expired, goodKey, "tls certificate " + expired + " expired on"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := certs.LoadStatic(tt.cert, tt.key, "relay.test")
			if err == nil {
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tt.want) || strings.Contains(err.Error(), "\n") {
				t.Fatalf("error %q, want one line containing %q", err, tt.want)
			}
		})
	}
}

func TestLoadStaticServesWildcard(t *testing.T) {
	dir := t.TempDir()
	ca := newTestCA(t)
	later := time.Now().Add(24 * time.Hour)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ecdsaKey := ecKey(t)
	tests := []struct {
		name    string
		certPEM []byte
		keyPEM  []byte
	}{
		{"ECDSA key in PKCS#8",
			ca.issue(t, ecdsaKey, later, "relay.test", "*.relay.test"), pkcs8PEM(t, ecdsaKey)},
		{"ECDSA key in SEC 1 with the chain after the leaf",
			append(ca.issue(t, ecdsaKey, later, "*.relay.test", "relay.test"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})...),
			func() []byte {
				der, err := x509.MarshalECPrivateKey(ecdsaKey)
				if err != nil {
					t.Fatal(err)
				}
				return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
			}()},
		{"RSA key in PKCS#1",
			ca.issue(t, rsaKey, later, "relay.test", "*.relay.test"),
			pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certFile := writeFile(t, dir, "cert"+string(rune('a'+i))+".pem", tt.certPEM)
			keyFile := writeFile(t, dir, "key"+string(rune('a'+i))+".pem", tt.keyPEM)
			static, err := certs.LoadStatic(certFile, keyFile, "Relay.Test.")
			if err != nil {
				t.Fatal(err)
			}
			addr, _ := serveTLS(t, certs.TLSConfig(static, []string{"h2", "http/1.1"}))
			for _, name := range []string{"x.relay.test", "relay.test"} {
				if _, err := handshake(t, addr, name, ca.pool()); err != nil {
					t.Errorf("handshake for %s: %v", name, err)
				}
			}
		})
	}
}
