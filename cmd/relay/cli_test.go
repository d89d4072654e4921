package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/protocol"
	"github.com/relaytunnel/relay/server"
	"github.com/relaytunnel/relay/server/certs"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	code = run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func devServer(t *testing.T, dir string) *server.Server {
	t.Helper()
	srv, err := server.New(context.Background(), server.Config{Dev: true, Listen: "127.0.0.1:0", DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	srv.Start()
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	return srv
}

func TestTokenCommands(t *testing.T) {
	dir := t.TempDir()
	code, out, errs := runCLI(t, "token", "create", "--init", "--name", "stripe-dev", "--data", dir)
	if code != 0 {
		t.Fatalf("create: %d %s", code, errs)
	}
	secret := relaytest.FindToken(out)
	id := regexp.MustCompile(`tok_[a-z2-7]+`).FindString(out)
	if secret == "" || id == "" {
		t.Fatalf("create printed %q", out)
	}
	code, out, _ = runCLI(t, "token", "list", "--data", dir)
	if code != 0 || !strings.Contains(out, id) || !strings.Contains(out, "stripe-dev") || strings.Contains(out, secret) {
		t.Fatalf("list: %d %q", code, out)
	}
	code, _, errs = runCLI(t, "token", "create", "--name", "stripe-dev", "--data", dir)
	if code == 0 || !strings.Contains(errs, "already reserved") || strings.Count(errs, "\n") != 1 {
		t.Fatalf("taken name: %d %q", code, errs)
	}
	code, _, errs = runCLI(t, "token", "create", "--name", "Bad.Name", "--data", dir)
	if code == 0 || !strings.Contains(errs, "invalid tunnel name") {
		t.Fatalf("bad name: %d %q", code, errs)
	}
	if code, _, errs = runCLI(t, "token", "revoke", id, "--data", dir); code != 0 {
		t.Fatalf("revoke: %s", errs)
	}
	code, _, errs = runCLI(t, "token", "revoke", "tok_nope", "--data", dir)
	if code == 0 || !strings.Contains(errs, "not found") {
		t.Fatalf("revoke unknown: %d %q", code, errs)
	}
}

func TestConnectErrorsAreOneActionableLine(t *testing.T) {
	dir := t.TempDir()
	srv := devServer(t, dir)
	_, other, _ := srv.Store().CreateToken(context.Background(), "mine")
	srv.Store().CreateToken(context.Background(), "theirs")
	closed := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	mismatch := fakeRelay(t, dir)
	notRelay := httptest.NewTLSServer(http.NotFoundHandler())
	t.Cleanup(notRelay.Close)
	ca := filepath.Join(dir, "dev-ca.pem")

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"a bad token says the server refused it and how to make one",
			[]string{"--server", srv.Addr(), "--token", "relay_bogus", "--name", "mine"}, "refused the token"},
		{"a name owned by another token says so",
			[]string{"--server", srv.Addr(), "--token", other, "--name", "theirs"}, "reserved by another token"},
		{"an unreachable server names both transports and what to check",
			[]string{"--server", closed, "--quic-server", closed, "--token", other, "--transport", "auto"}, "cannot reach relay server"},
		{"a version mismatch names both versions",
			[]string{"--server", mismatch, "--token", other, "--transport", "tcp"}, "agent speaks protocol 1, server speaks protocol 2"},
		{"a server that is not relay says so",
			[]string{"--server", notRelay.Listener.Addr().String(), "--token", other, "--transport", "tcp", "--quic-server", closed}, "is it a relay server"},
		{"a missing token says where to get one",
			[]string{"--server", srv.Addr()}, "relay token create"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"connect", "3000", "--ca", ca, "--quic-server", srv.QUICAddr(), "--data", t.TempDir(), "--inspect", ""}, tt.args...)
			if tt.name == "a server that is not relay says so" {
				args = append([]string{"connect", "3000", "--data", t.TempDir(), "--inspect", ""}, tt.args...)
			}
			t.Setenv("RELAY_TOKEN", "")
			code, _, errs := runCLI(t, args...)
			if code == 0 {
				t.Fatal("exit status 0")
			}
			if !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "relay: ") {
				t.Fatalf("stderr = %q, want one line containing %q", errs, tt.want)
			}
		})
	}
}

// fakeRelay is a TLS+yamux server that speaks relay/1's framing but
// protocol version 2, answering every Hello with a version mismatch.
func fakeRelay(t *testing.T, dir string) string {
	t.Helper()
	ca, err := certs.NewDevCA(dir, certs.HostPolicy{Domain: "127.0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	conf := certs.TLSConfig(ca, []string{protocol.ALPN})
	ln, err := tls.Listen("tcp", "127.0.0.1:0", conf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				sess, err := protocol.ServerYamux(c, protocol.LivenessFor(0))
				if err != nil {
					return
				}
				defer sess.Close()
				st, err := sess.AcceptStream(context.Background())
				if err != nil {
					return
				}
				var h protocol.Hello
				protocol.ReadMessage(st, protocol.FrameHello, &h)
				protocol.WriteMessage(st, protocol.FrameReject, protocol.Reject{Code: protocol.RejectVersionMismatch, Version: 2,
					Message: "agent speaks protocol 1, server speaks protocol 2: install the same relay release on both sides"})
				<-sess.Done()
			}()
		}
	}()
	return ln.Addr().String()
}

func TestConnectCertificateProblemsAreOneLineAndNeverFallBack(t *testing.T) {
	dir := t.TempDir()
	srv := devServer(t, dir)
	_, token, _ := srv.Store().CreateToken(context.Background(), "mine")
	caPEM, caCert, caKey := testCA(t)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	os.WriteFile(caFile, caPEM, 0o600)
	now := time.Now()
	expired := tlsRelay(t, leafCert(t, caCert, caKey, []string{"localhost"}, now.Add(-48*time.Hour), now.Add(-24*time.Hour)))
	wrongName := tlsRelay(t, leafCert(t, caCert, caKey, []string{"other.example"}, now.Add(-time.Hour), now.Add(24*time.Hour)))
	closed := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	port := func(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"an untrusted CA says to pass --ca, over QUIC and TCP alike (auto)",
			[]string{"--server", "localhost:" + port(srv.Addr()), "--quic-server", srv.QUICAddr(), "--transport", "auto"},
			"the relay's certificate is not trusted by this machine: pass --ca FILE"},
		{"an untrusted CA over TCP",
			[]string{"--server", "localhost:" + port(srv.Addr()), "--transport", "tcp"},
			"the relay's certificate is not trusted by this machine: pass --ca FILE"},
		{"an expired certificate says so",
			[]string{"--server", "localhost:" + port(expired), "--quic-server", closed, "--transport", "tcp", "--ca", caFile},
			"the relay's certificate expired on"},
		{"a certificate for another name says which names it has",
			[]string{"--server", "localhost:" + port(wrongName), "--quic-server", closed, "--transport", "auto", "--ca", caFile},
			"the relay's certificate is not for localhost (it names other.example): check --server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv("RELAY_TOKEN", "")
			args := append([]string{"connect", "3000", "--token", token, "--data", t.TempDir(), "--inspect", ""}, tt.args...)
			code, out, errs := runCLI(t, args...)
			if code == 0 {
				t.Fatal("exit status 0")
			}
			if !strings.Contains(errs, tt.want) || strings.Count(errs, "\n") != 1 || !strings.HasPrefix(errs, "relay: ") {
				t.Fatalf("stderr = %q, want one line containing %q", errs, tt.want)
			}
			if strings.Contains(out, "falling back") || strings.Contains(errs, "cannot reach") {
				t.Fatalf("a certificate problem was taken for an unreachable server:\n%s%s", out, errs)
			}
		})
	}
}

func testCA(t *testing.T) ([]byte, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-72 * time.Hour), NotAfter: time.Now().Add(72 * time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert, key
}

func leafCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, names []string, from, until time.Time) tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: from, NotAfter: until, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsRelay listens for TLS with ALPN relay/1 and cert, and hangs up after
// the handshake: enough for an agent to judge the certificate.
func tlsRelay(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{protocol.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	return ln.Addr().String()
}
