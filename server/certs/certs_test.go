package certs_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/server/certs"
)

// reservedSet answers the store's question from a fixed set of labels.
func reservedSet(labels ...string) certs.Reserved {
	return func(_ context.Context, label string) (bool, error) {
		return slices.Contains(labels, label), nil
	}
}

// serveTLS accepts connections on 127.0.0.1 with cfg, completes each
// handshake and closes it, until the test ends. It returns the address and
// port.
func serveTLS(t *testing.T, cfg *tls.Config) (string, int) {
	t.Helper()
	ln := reservePort(t)
	return serveTLSOn(t, ln, cfg), ln.Addr().(*net.TCPAddr).Port
}

// reservePort holds a loopback TCP port, for a listener that must exist
// before Pebble starts (Pebble must know every port it validates on).
func reservePort(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveTLSOn is serveTLS on an existing listener.
func serveTLSOn(t *testing.T, ln net.Listener, cfg *tls.Config) string {
	t.Helper()
	tlsLn := tls.NewListener(ln, cfg)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			conn, err := tlsLn.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer conn.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				conn.(*tls.Conn).HandshakeContext(ctx)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	return ln.Addr().String()
}

// handshake dials addr with SNI name, trusting only roots, and returns the
// verified leaf. An empty name sends no SNI and verifies the leaf for
// verifyAs instead.
func handshake(t *testing.T, addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	cfg := &tls.Config{ServerName: name, RootCAs: roots}
	d := tls.Dialer{Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// handshakeNoSNI dials addr without SNI, as curl to an IP address does,
// and verifies the leaf as a certificate for name.
func handshakeNoSNI(t *testing.T, addr, name string, roots *x509.CertPool) (*x509.Certificate, error) {
	t.Helper()
	cfg := &tls.Config{
		InsecureSkipVerify: true, // verified below for name, since no SNI is sent
		VerifyConnection: func(cs tls.ConnectionState) error {
			if cs.ServerName != "" {
				return errors.New("client sent SNI")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter})
			return err
		},
	}
	d := tls.Dialer{Config: cfg}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0], nil
}

// lockedBuffer collects log output written from handshake goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestTLSConfig(t *testing.T) {
	dev, err := certs.NewDevCA(t.TempDir(), certs.HostPolicy{Domain: "relay.test"})
	if err != nil {
		t.Fatal(err)
	}
	acme, err := certs.NewACME(certs.ACMEConfig{Dir: t.TempDir(), Policy: certs.HostPolicy{Domain: "relay.test"}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		src    certs.Source
		protos []string
		want   []string
	}{
		{"dev CA offers the caller's protocols only", dev, []string{"relay/1", "h2", "http/1.1"}, []string{"relay/1", "h2", "http/1.1"}},
		{"ACME adds acme-tls/1 last", acme, []string{"relay/1", "h2", "http/1.1"}, []string{"relay/1", "h2", "http/1.1", "acme-tls/1"}},
		{"ACME does not repeat acme-tls/1", acme, []string{"relay/1", "acme-tls/1"}, []string{"relay/1", "acme-tls/1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			given := slices.Clone(tt.protos)
			cfg := certs.TLSConfig(tt.src, given)
			if !slices.Equal(cfg.NextProtos, tt.want) {
				t.Errorf("NextProtos = %q, want %q", cfg.NextProtos, tt.want)
			}
			if !slices.Equal(given, tt.protos) {
				t.Errorf("caller's slice changed to %q", given)
			}
			if cfg.MinVersion != tls.VersionTLS12 {
				t.Errorf("MinVersion = %x, want TLS 1.2", cfg.MinVersion)
			}
			if cfg.GetCertificate == nil {
				t.Error("GetCertificate not set")
			}
		})
	}
}
