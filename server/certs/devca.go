package certs

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

const (
	devCAName = "relay dev CA"
	// devLeafLife is short because leaves are free to reissue and live
	// only in memory; devLeafRenew is when a running server reissues.
	devLeafLife  = 7 * 24 * time.Hour
	devLeafRenew = 24 * time.Hour
)

// DevCA is a local certificate authority for --dev. Its root is kept in
// the data directory, so users trust it once (curl --cacert, agent --ca)
// across restarts; leaves are issued per allowed name on first use.
type DevCA struct {
	policy   HostPolicy
	certPath string
	ca       *x509.Certificate
	key      *ecdsa.PrivateKey

	mu     sync.Mutex
	leaves map[string]*devLeaf // by normalised name
}

// devLeaf is one name's certificate; ready is closed once cert or err is
// set, so concurrent handshakes for a new name wait for one issuance.
type devLeaf struct {
	ready chan struct{}
	cert  *tls.Certificate
	err   error
}

// NewDevCA loads dir/dev-ca.pem and dir/dev-ca-key.pem, creating both the
// first time.
func NewDevCA(dir string, policy HostPolicy) (*DevCA, error) {
	certPath := filepath.Join(dir, "dev-ca.pem")
	keyPath := filepath.Join(dir, "dev-ca-key.pem")
	certPEM, certErr := os.ReadFile(certPath)
	keyPEM, keyErr := os.ReadFile(keyPath)
	switch {
	case errors.Is(certErr, os.ErrNotExist) && errors.Is(keyErr, os.ErrNotExist):
		var err error
		if certPEM, keyPEM, err = newDevCA(time.Now()); err != nil {
			return nil, fmt.Errorf("create dev CA: %w", err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, fmt.Errorf("create dev CA: %w", err)
		}
		// The key first: a certificate on disk always has its key.
		if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
			return nil, fmt.Errorf("create dev CA: %w", err)
		}
		if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
			return nil, fmt.Errorf("create dev CA: %w", err)
		}
	case certErr != nil:
		return nil, fmt.Errorf("read dev CA: %w", certErr)
	case keyErr != nil:
		return nil, fmt.Errorf("read dev CA key: %w (remove %s to create a new CA)", keyErr, certPath)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load dev CA %s: %w", certPath, err)
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("load dev CA %s: key is %T, want ECDSA", certPath, pair.PrivateKey)
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return nil, fmt.Errorf("load dev CA %s: %w", certPath, err)
	}
	if !ca.IsCA {
		return nil, fmt.Errorf("load dev CA %s: not a CA certificate", certPath)
	}
	return &DevCA{policy: policy, certPath: certPath, ca: ca, key: key, leaves: map[string]*devLeaf{}}, nil
}

// CertPath is the CA certificate file clients should trust.
func (c *DevCA) CertPath() string { return c.certPath }

// Pool is a pool holding only the dev CA.
func (c *DevCA) Pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.ca)
	return p
}

// GetCertificate returns the leaf for an allowed name, issuing it on first
// use. A hello without SNI gets the apex's leaf.
func (c *DevCA) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := serverName(hello, c.policy.Domain)
	ctx := hello.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	if err := c.policy.Allow(ctx, name); err != nil {
		return nil, err
	}
	l, owner := c.leaf(name, time.Now())
	if owner {
		l.cert, l.err = c.issue(name, time.Now())
		close(l.ready)
	}
	select {
	case <-l.ready:
		return l.cert, l.err
	case <-ctx.Done():
		return nil, fmt.Errorf("certificate for %s: %w", name, ctx.Err())
	}
}

// leaf returns name's entry; owner is true when the caller made it and
// must issue the certificate.
func (c *DevCA) leaf(name string, now time.Time) (l *devLeaf, owner bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.leaves[name]; ok && !l.stale(now) {
		return l, false
	}
	l = &devLeaf{ready: make(chan struct{})}
	c.leaves[name] = l
	return l, true
}

// stale reports whether a finished entry failed or nears expiry; an entry
// still being issued is not stale.
func (l *devLeaf) stale(now time.Time) bool {
	select {
	case <-l.ready:
		return l.err != nil || now.After(l.cert.Leaf.NotAfter.Add(-devLeafRenew))
	default:
		return false
	}
}

func (c *DevCA) issue(name string, now time.Time) (*tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("issue dev certificate for %s: %w", name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: newSerial(),
		Subject:      pkix.Name{CommonName: name},
		DNSNames:     []string{name},
		NotBefore:    now.Add(-time.Hour), // tolerate clock skew
		NotAfter:     now.Add(devLeafLife),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if name == normalizeHost(c.policy.Domain) {
		// Dev servers listen on loopback; this lets
		// curl --cacert dev-ca.pem https://127.0.0.1:PORT/ verify.
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.ca, &key.PublicKey, c.key)
	if err != nil {
		return nil, fmt.Errorf("issue dev certificate for %s: %w", name, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("issue dev certificate for %s: %w", name, err)
	}
	return &tls.Certificate{Certificate: [][]byte{der, c.ca.Raw}, PrivateKey: key, Leaf: leaf}, nil
}

// newDevCA makes a self-signed P-256 CA valid for ten years.
func newDevCA(now time.Time) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          newSerial(),
		Subject:               pkix.Name{CommonName: devCAName, Organization: []string{"relay"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), nil
}

func newSerial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail on supported platforms
	}
	return n
}

// writeFileAtomic writes through a temporary file and a rename, so a crash
// never leaves a truncated CA behind.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // fails harmlessly after the rename
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(f.Name(), path)
}
