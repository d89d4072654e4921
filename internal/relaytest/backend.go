package relaytest

import (
	"context"
	"testing"

	"github.com/relaytunnel/relay/internal/pgtest"
	"github.com/relaytunnel/relay/server"
)

// Backends are the stores a relay server keeps its state in; tests of
// that state run over both.
var Backends = []string{"sqlite", "postgres"}

// Backend is where a test's relay servers keep their state: a data
// directory, and for "postgres" a fresh database (the test is skipped
// when PostgreSQL is not installed, see pgtest).
type Backend struct {
	Name     string
	DataDir  string
	Database string
}

// NewBackend makes an empty backend of the given kind.
func NewBackend(t testing.TB, name string) Backend {
	t.Helper()
	b := Backend{Name: name, DataDir: t.TempDir()}
	if name == "postgres" {
		b.Database = pgtest.URL(t)
	}
	return b
}

// Use points a server's configuration at b (a StartServer mod).
func (b Backend) Use(c *server.Config) {
	c.DataDir, c.Database = b.DataDir, b.Database
}

// Open is another handle on b's database, as another process (relay
// token, another node) would have; it is closed when the test ends.
func (b Backend) Open(t testing.TB) server.Store {
	t.Helper()
	st, err := server.OpenStore(context.Background(), server.StoreConfig{DataDir: b.DataDir, Database: b.Database})
	if err != nil {
		t.Fatalf("open the %s store: %v", b.Name, err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
