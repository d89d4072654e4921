package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// Static serves one certificate loaded from files, normally a wildcard for
// DOMAIN and *.DOMAIN obtained with a DNS-01 client. It is not reloaded:
// restart the server after renewing.
type Static struct {
	cert *tls.Certificate
}

// LoadStatic loads certFile (the leaf first, then its chain) and keyFile,
// and checks that they match, are current, and cover both domain and
// NAME.domain, so a wrong file fails at start and not at the first
// provider's handshake.
func LoadStatic(certFile, keyFile, domain string) (*Static, error) {
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("read tls certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("read tls key: %w", err)
	}
	chain, err := parseCertChain(certPEM)
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s: %w", certFile, err)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, fmt.Errorf("tls certificate %s: %w", certFile, err)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls key %s: %w", keyFile, err)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		return nil, fmt.Errorf("tls key %s does not match certificate %s", keyFile, certFile)
	}
	if now := time.Now(); now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("tls certificate %s expired on %s", certFile, leaf.NotAfter.UTC().Format(time.DateOnly))
	}
	apex := normalizeHost(domain)
	// Any label stands for every reserved name: only a wildcard covers them.
	for _, host := range []string{apex, "name." + apex} {
		if leaf.VerifyHostname(host) != nil {
			return nil, fmt.Errorf("tls certificate %s covers %s, not both %s and *.%s",
				certFile, describeNames(leaf), apex, apex)
		}
	}
	return &Static{cert: &tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}}, nil
}

// GetCertificate returns the one certificate, whatever the SNI.
func (s *Static) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return s.cert, nil
}

func parseCertChain(data []byte) ([][]byte, error) {
	var chain [][]byte
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type == "CERTIFICATE" {
			chain = append(chain, block.Bytes)
		}
	}
	if len(chain) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return chain, nil
}

// parseKey reads the first PEM private key in any of the encodings
// certbot, lego and openssl write.
func parseKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM PRIVATE KEY block found")
		}
		if !strings.HasSuffix(block.Type, "PRIVATE KEY") {
			continue
		}
		var key any
		var err error
		switch block.Type {
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		default:
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		}
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", block.Type, err)
		}
		switch k := key.(type) {
		case *rsa.PrivateKey, *ecdsa.PrivateKey, ed25519.PrivateKey:
			return k.(crypto.Signer), nil
		default:
			return nil, fmt.Errorf("unsupported key type %T", key)
		}
	}
}

func describeNames(leaf *x509.Certificate) string {
	names := leaf.DNSNames
	if len(names) == 0 && leaf.Subject.CommonName != "" {
		names = []string{"CN " + leaf.Subject.CommonName}
	}
	if len(names) == 0 {
		return "no names"
	}
	return strings.Join(names, ", ")
}
