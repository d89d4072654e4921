package certs_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"golang.org/x/crypto/acme/autocert"

	"github.com/relaytunnel/relay/internal/pebbletest"
	"github.com/relaytunnel/relay/server/certs"
)

// turnCache is a shared cache (a directory two ACME sources use, as two
// nodes use one database) that counts the cluster turns taken.
type turnCache struct {
	autocert.DirCache
	turns   atomic.Int64
	refused error // LockIssue's error, when set
}

func (c *turnCache) LockIssue(ctx context.Context, name string) (func(), error) {
	c.turns.Add(1)
	if c.refused != nil {
		return nil, c.refused
	}
	return func() {}, nil
}

// TestACMEWithASharedCacheTakesTheClustersTurnOnlyForANamesFirstCertificate:
// a burst of first handshakes for a name takes the cluster's turn once
// (not a database connection per hello), a name already certified or not
// allowed never takes it, and another node finds the certificate in the
// cache without a turn or an order.
func TestACMEWithASharedCacheTakesTheClustersTurnOnlyForANamesFirstCertificate(t *testing.T) {
	ln := reservePort(t)
	pebble := pebbletest.Start(t, ln.Addr().(*net.TCPAddr).Port, 0)
	cache := &turnCache{DirCache: autocert.DirCache(t.TempDir())}
	logs := &lockedBuffer{}
	a := newACME(t, certs.ACMEConfig{Cache: cache}, pebble, logs)
	addr := serveTLSOn(t, ln, certs.TLSConfig(a, []string{"http/1.1"}))
	name := "abc." + acmeDomain

	var wg sync.WaitGroup
	errs := make(chan error, 5)
	for range cap(errs) {
		wg.Go(func() {
			_, err := handshake(t, addr, name, pebble.Roots())
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("handshake for %s: %v", name, err)
		}
	}
	if n := cache.turns.Load(); n != 1 {
		t.Fatalf("%d concurrent first handshakes took the cluster's turn %d times, want once", cap(errs), n)
	}
	if _, err := handshake(t, addr, name, pebble.Roots()); err != nil {
		t.Fatal(err)
	}
	if _, err := handshake(t, addr, "zzz."+acmeDomain, pebble.Roots()); err == nil {
		t.Fatal("an unreserved name got a certificate")
	}
	if n := cache.turns.Load(); n != 1 {
		t.Errorf("a certified or an unreserved name took the cluster's turn (%d turns, want 1)", n)
	}

	// Another node on the same cache: the certificate is there.
	orders := pebble.Orders()
	other := newACME(t, certs.ACMEConfig{Cache: cache}, pebble, logs)
	otherAddr, _ := serveTLS(t, certs.TLSConfig(other, []string{"http/1.1"}))
	if _, err := handshake(t, otherAddr, name, pebble.Roots()); err != nil {
		t.Fatal(err)
	}
	if n := cache.turns.Load(); n != 1 || pebble.Orders() != orders {
		t.Errorf("a node that finds the certificate in the cache took a turn or ordered (%d turns, %d new orders)", n, pebble.Orders()-orders)
	}
}

// TestACMEOrdersWithoutTheClustersTurnWhenTheLockFails: an unreachable
// database costs at worst a duplicate certificate, never the certificate.
func TestACMEOrdersWithoutTheClustersTurnWhenTheLockFails(t *testing.T) {
	ln := reservePort(t)
	pebble := pebbletest.Start(t, ln.Addr().(*net.TCPAddr).Port, 0)
	cache := &turnCache{DirCache: autocert.DirCache(t.TempDir()), refused: errors.New("database unreachable")}
	logs := &lockedBuffer{}
	addr := serveTLSOn(t, ln, certs.TLSConfig(newACME(t, certs.ACMEConfig{Cache: cache}, pebble, logs), []string{"http/1.1"}))
	name := "web." + acmeDomain
	if _, err := handshake(t, addr, name, pebble.Roots()); err != nil {
		t.Fatalf("handshake for %s with the lock failing: %v", name, err)
	}
	if !strings.Contains(logs.String(), "acme order without the cluster's turn") || !strings.Contains(logs.String(), "database unreachable") {
		t.Errorf("the failed lock was not logged with its cause:\n%s", logs.String())
	}
}
