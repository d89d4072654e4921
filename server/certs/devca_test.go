package certs_test

import (
	"bytes"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/relaytunnel/relay/server/certs"
)

func TestDevCAIsPersistedAndReused(t *testing.T) {
	dir := t.TempDir()
	first, err := certs.NewDevCA(dir, certs.HostPolicy{Domain: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := first.CertPath(), filepath.Join(dir, "dev-ca.pem"); got != want {
		t.Errorf("CertPath = %s, want %s", got, want)
	}
	certPEM, err := os.ReadFile(first.CertPath())
	if err != nil {
		t.Fatal(err)
	}
	ca := parsePEMCert(t, certPEM)
	if ca.Subject.CommonName != "relay dev CA" || !ca.IsCA {
		t.Errorf("CA is %q (IsCA=%v), want the CA \"relay dev CA\"", ca.Subject.CommonName, ca.IsCA)
	}
	if life := ca.NotAfter.Sub(ca.NotBefore); life < 9*365*24*time.Hour {
		t.Errorf("CA valid for %s, want about ten years", life)
	}
	info, err := os.Stat(filepath.Join(dir, "dev-ca-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o600 {
		t.Errorf("key file mode %o, want 600", perm)
	}

	second, err := certs.NewDevCA(dir, certs.HostPolicy{Domain: "localhost"})
	if err != nil {
		t.Fatal(err)
	}
	again, err := os.ReadFile(second.CertPath())
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, certPEM) {
		t.Fatal("second start replaced the CA certificate")
	}
	// The second instance signs with the persisted key: its leaves verify
	// against the first instance's root.
	addr, _ := serveTLS(t, certs.TLSConfig(second, nil))
	if _, err := handshake(t, addr, "localhost", first.Pool()); err != nil {
		t.Errorf("leaf from the reloaded CA does not verify against the original root: %v", err)
	}
}

func TestDevCARefusesBrokenFiles(t *testing.T) {
	tests := []struct {
		name    string
		prepare func(t *testing.T, dir string)
		want    string
	}{
		{"key missing beside the certificate", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "dev-ca-key.pem"))
		}, "dev-ca-key.pem"},
		{"certificate missing beside the key", func(t *testing.T, dir string) {
			os.Remove(filepath.Join(dir, "dev-ca.pem"))
		}, "dev-ca.pem"},
		{"garbage certificate", func(t *testing.T, dir string) {
			os.WriteFile(filepath.Join(dir, "dev-ca.pem"), []byte("not pem"), 0o644)
		}, "load dev CA"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			if _, err := certs.NewDevCA(dir, certs.HostPolicy{Domain: "localhost"}); err != nil {
				t.Fatal(err)
			}
			tt.prepare(t, dir)
			_, err := certs.NewDevCA(dir, certs.HostPolicy{Domain: "localhost"})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewDevCA = %v, want an error naming %s", err, tt.want)
			}
		})
	}
}

func TestDevCAServesAllowedNames(t *testing.T) {
	for _, domain := range []string{"localhost", "relay.test"} {
		t.Run(domain, func(t *testing.T) {
			dev, err := certs.NewDevCA(t.TempDir(), certs.HostPolicy{Domain: domain, Reserved: reservedSet("abc")})
			if err != nil {
				t.Fatal(err)
			}
			addr, _ := serveTLS(t, certs.TLSConfig(dev, []string{"relay/1", "h2", "http/1.1"}))
			// Trust exactly the file users pass to curl --cacert / agent --ca.
			caPEM, err := os.ReadFile(dev.CertPath())
			if err != nil {
				t.Fatal(err)
			}
			roots := x509.NewCertPool()
			roots.AppendCertsFromPEM(caPEM)

			tests := []struct {
				name   string
				sni    string
				wantOK bool
			}{
				{"reserved name verifies", "abc." + domain, true},
				{"apex verifies", domain, true},
				{"uppercase SNI verifies", "ABC." + strings.ToUpper(domain), true},
				{"unreserved name fails the handshake", "zzz." + domain, false},
				{"other domain fails the handshake", "abc.example.com", false},
			}
			for _, tt := range tests {
				t.Run(tt.name, func(t *testing.T) {
					leaf, err := handshake(t, addr, tt.sni, roots)
					if !tt.wantOK {
						if err == nil {
							t.Fatalf("handshake for %s succeeded with %v", tt.sni, leaf.DNSNames)
						}
						return
					}
					if err != nil {
						t.Fatalf("handshake for %s: %v", tt.sni, err)
					}
					if want := strings.ToLower(tt.sni); len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != want {
						t.Errorf("leaf names %v, want [%s]", leaf.DNSNames, want)
					}
					if life := leaf.NotAfter.Sub(leaf.NotBefore); life > 8*24*time.Hour {
						t.Errorf("leaf valid for %s, want a short-lived certificate", life)
					}
				})
			}
			t.Run("hello without SNI gets the apex certificate, valid for loopback", func(t *testing.T) {
				leaf, err := handshakeNoSNI(t, addr, domain, roots)
				if err != nil {
					t.Fatal(err)
				}
				// What curl --cacert dev-ca.pem https://127.0.0.1:PORT/ checks.
				if err := leaf.VerifyHostname("127.0.0.1"); err != nil {
					t.Error(err)
				}
			})
		})
	}
}

func TestDevCAIssuesOneCertificateForConcurrentHandshakes(t *testing.T) {
	dev, err := certs.NewDevCA(t.TempDir(), certs.HostPolicy{Domain: "relay.test", Reserved: reservedSet("new")})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serveTLS(t, certs.TLSConfig(dev, nil))
	const n = 200
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		serials = map[string]int{}
		errs    []error
	)
	for range n {
		wg.Go(func() {
			<-start
			leaf, err := handshake(t, addr, "new.relay.test", dev.Pool())
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				errs = append(errs, err)
				return
			}
			serials[leaf.SerialNumber.String()]++
		})
	}
	close(start)
	wg.Wait()
	if len(errs) > 0 {
		t.Fatalf("%d of %d handshakes failed, first: %v", len(errs), n, errs[0])
	}
	if len(serials) != 1 {
		t.Fatalf("%d handshakes saw %d different certificates, want 1", n, len(serials))
	}
}

func parsePEMCert(t *testing.T, data []byte) *x509.Certificate {
	t.Helper()
	chain, err := certsFromPEM(data)
	if err != nil {
		t.Fatal(err)
	}
	return chain[0]
}
