package server_test

import (
	"context"
	"crypto/x509"
	"net"
	"strconv"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/relaytunnel/relay/internal/pebbletest"
	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/internal/relaytest"
	"github.com/relaytunnel/relay/server"
)

// acmeCluster is two ACME nodes, n1 and n2, on one PostgreSQL database,
// with Pebble as their CA. Pebble's TLS-ALPN-01 check dials n1 and fails
// there, since a node of a cluster never offers acme-tls/1; its HTTP-01
// check reaches n2's HTTP listener only, as a CA's may reach any node
// when DNS names every node.
type acmeCluster struct {
	pebble     *pebbletest.Pebble
	database   string
	n1, n2     *server.Server
	challenges *challengeWatch // in front of n2's HTTP listener
}

func startACMECluster(t *testing.T) acmeCluster {
	t.Helper()
	c := acmeCluster{database: pgtest.URL(t)}
	loopback := func(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }
	n1Port := relaytest.FreePort(t)
	n1, n2, n2HTTP := loopback(n1Port), loopback(relaytest.FreePort(t)), loopback(relaytest.FreePort(t))
	c.challenges = watchChallenges(t, n2HTTP)
	c.pebble = pebbletest.Start(t, n1Port, c.challenges.port())
	node := func(nodeName, addr, httpListen string) acmeRelay {
		return acmeRelay{pebble: c.pebble, dataDir: t.TempDir(), database: c.database, listen: addr,
			quicListen: "off", httpListen: httpListen, nodeName: nodeName, advertise: addr}
	}
	// n1 needs an HTTP listener too: without one autocert never tries
	// HTTP-01 for the names n1 orders.
	c.n1, _ = node("n1", n1, "127.0.0.1:0").start(t)
	c.n2, _ = node("n2", n2, n2HTTP).start(t)
	relaytest.WaitFor(t, "both nodes to see each other", func() bool {
		return len(c.n1.Nodes()) == 2 && len(c.n2.Nodes()) == 2
	})
	return c
}

// TestACMEInAClusterAnotherNodeAnswersHTTP01AndEveryNodeServesTheOneCertificate:
// a handshake on n1 orders a tunnel's certificate and Pebble's HTTP-01
// check reaches n2, which can answer only from the token n1 put in the
// shared cache. n2 then serves n1's certificate without a new order.
func TestACMEInAClusterAnotherNodeAnswersHTTP01AndEveryNodeServesTheOneCertificate(t *testing.T) {
	const tunnel = "hooks"
	name := tunnel + "." + acmeDomain
	c := startACMECluster(t)
	relaytest.CreateToken(t, c.n1, tunnel)

	leaf, err := acmeHandshake(c.n1.Addr(), name, c.pebble.Roots())
	if err != nil {
		t.Fatalf("handshake for %s on n1: %v (n2 answered %d HTTP-01 challenges, refused %d)",
			name, err, c.challenges.answered.Load(), c.challenges.refused.Load())
	}
	if err := leaf.VerifyHostname(name); err != nil {
		t.Fatal(err)
	}
	if c.challenges.answered.Load() == 0 {
		t.Fatalf("n2 answered no HTTP-01 challenge (%d refused): the certificate was not validated through another node", c.challenges.refused.Load())
	}
	orders := c.pebble.Orders()
	// autocert deletes a challenge token from the cache once its order is
	// done; none may outlive it in the shared table.
	if left := cachedChallengeTokens(t, c.database); left != 0 {
		t.Errorf("%d HTTP-01 tokens left in acme_cache after issuance, want 0", left)
	}

	again, err := acmeHandshake(c.n2.Addr(), name, c.pebble.Roots())
	if err != nil {
		t.Fatalf("handshake for %s on n2: %v", name, err)
	}
	if again.SerialNumber.Cmp(leaf.SerialNumber) != 0 {
		t.Errorf("n2 serves serial %s for %s, want n1's %s from the shared cache", again.SerialNumber, name, leaf.SerialNumber)
	}
	if n := c.pebble.Orders(); n != orders {
		t.Errorf("n2's handshake placed %d new orders, want none", n-orders)
	}
}

// TestACMENodesGettingANamesFirstHandshakesAtOnceOrderOneCertificate: the
// first handshakes for a name arrive on both nodes at the same moment (a
// provider's parallel deliveries, DNS sending them to different nodes).
// One node orders while the other waits its turn and then finds the
// certificate in the shared cache.
func TestACMENodesGettingANamesFirstHandshakesAtOnceOrderOneCertificate(t *testing.T) {
	const tunnel = "burst"
	name := tunnel + "." + acmeDomain
	c := startACMECluster(t)
	relaytest.CreateToken(t, c.n1, tunnel)

	const perNode = 3
	var wg sync.WaitGroup
	start := make(chan struct{})
	leaves := make([]*x509.Certificate, 2*perNode)
	errs := make([]error, len(leaves))
	for i := range leaves {
		addr := []*server.Server{c.n1, c.n2}[i%2].Addr()
		wg.Go(func() {
			<-start
			leaves[i], errs[i] = acmeHandshake(addr, name, c.pebble.Roots())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("handshake %d for %s on n%d: %v", i, name, i%2+1, err)
		}
	}
	for i, leaf := range leaves {
		if leaf.SerialNumber.Cmp(leaves[0].SerialNumber) != 0 {
			t.Errorf("handshake %d on n%d got serial %s, handshake 0 on n1 %s: more than one certificate", i, i%2+1, leaf.SerialNumber, leaves[0].SerialNumber)
		}
	}
	if n := c.pebble.Certificates(); n != 1 {
		t.Errorf("Pebble issued %d certificates for %s, want 1", n, name)
	}
}

// cachedChallengeTokens counts the HTTP-01 tokens autocert keeps in the
// database's cache (under "TOKEN+http-01").
func cachedChallengeTokens(t *testing.T, database string) int {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, database)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM acme_cache WHERE key LIKE '%+http-01'`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}
