// Package certs gives the relay server its certificates. One Source answers
// GetCertificate for every TLS listener (providers' HTTPS and agents'
// TLS+yamux on TCP, agents' QUIC on UDP), so a name has the same certificate
// whichever way it is reached. There are three sources: a dev CA that issues
// a leaf per name on demand, a certificate from files (normally a wildcard),
// and an ACME CA through autocert. Each asks the same HostPolicy before
// serving or requesting a certificate for a name.
package certs

import (
	"crypto/tls"
	"slices"
	"strings"
)

// Source hands out certificates during TLS handshakes.
type Source interface {
	GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error)
}

// challengeResponder is a Source that must see handshakes offering extra
// ALPN protocols (acme-tls/1) to answer a CA's validation.
type challengeResponder interface {
	challengeProtos() []string
}

// TLSConfig is the server-side TLS configuration for src, offering
// nextProtos in order of preference, plus acme-tls/1 when src answers ACME
// TLS-ALPN-01 challenges (the CA validates on the same port 443).
func TLSConfig(src Source, nextProtos []string) *tls.Config {
	protos := slices.Clone(nextProtos)
	if cr, ok := src.(challengeResponder); ok {
		for _, p := range cr.challengeProtos() {
			if !slices.Contains(protos, p) {
				protos = append(protos, p)
			}
		}
	}
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     protos,
		GetCertificate: src.GetCertificate,
	}
}

// serverName is the normalised SNI, or the apex when the client sent none
// (a client that dialled an IP address).
func serverName(hello *tls.ClientHelloInfo, apex string) string {
	if hello.ServerName == "" {
		return normalizeHost(apex)
	}
	return normalizeHost(hello.ServerName)
}

func normalizeHost(host string) string {
	return strings.TrimSuffix(strings.ToLower(host), ".")
}
